"""deploy/template.yaml and the state machine it deploys: lint, least privilege, and ASL shape.

Three layers, cheapest first:
- cfn-lint on the SAM template (and on the ASL definition embedded in a plain
  AWS::StepFunctions::StateMachine, where cfn-lint's rule E3601 checks it against the ASL schema);
- the SAM transform (aws-sam-translator, the library `sam validate` uses) turns the template into
  the CloudFormation that would really deploy, and the IAM roles in it are asserted statement by
  statement;
- the ASL JSON is walked for its graph (targets, terminals, reachability) and run by a small
  interpreter of the subset it uses against a fake loader, to prove the data flow: plan -> shards
  -> re-invoke partial shards -> finalize.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
ASL = ROOT / "deploy" / "statemachine" / "load_hour.asl.json"
SCHEDULE = "cron(5 * * * ? *)"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:clickstream-loader"
SUBSTITUTIONS = {"LoaderFunctionArn": FUNCTION_ARN, "ShardCount": "3", "MapMaxConcurrency": "2"}
LAMBDA_TRANSIENT = {"Lambda.TooManyRequestsException", "Lambda.ServiceException"}


def cfn_lint() -> str:
    """The cfn-lint installed next to this interpreter (the project's .venv), else on PATH."""
    beside = Path(sys.executable).parent / "cfn-lint"
    found = str(beside) if beside.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is a dev dependency: pip install -e '.[dev]'"
    return found


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    """The SAM template as plain data; cfn-lint's loader understands !Ref, !Sub, !If ..."""
    return json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))


@pytest.fixture(scope="module")
def deployed(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation the SAM transform generates: what IAM really gets."""
    sam = copy.deepcopy(template)
    # The transform needs S3 locations where `sam deploy` would have uploaded the artifacts.
    for function in (
        "LoaderFunction",
        "EventLoaderFunction",
        "MaintenanceFunction",
        "ErasureFunction",
    ):
        sam["Resources"][function]["Properties"]["CodeUri"] = "s3://artifacts/loader.zip"
    sam["Resources"]["LoadHourStateMachine"]["Properties"]["DefinitionUri"] = {
        "Bucket": "artifacts",
        "Key": "load_hour.asl.json",
    }
    translator = Translator(
        managed_policy_map={},
        sam_parser=Parser(),
        boto_session=boto3.session.Session(region_name="us-east-1"),
    )
    return translator.translate(sam_template=sam, parameter_values={})


def resources_of_type(cfn: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == type_}


def policy_statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every statement of a role's inline policies, with Fn::If branches unfolded."""
    for policy in role["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:
                _, when_true, when_false = statement["Fn::If"]
                for branch in (when_true, when_false):
                    if branch != {"Ref": "AWS::NoValue"}:
                        yield branch
            else:
                yield statement


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


# --- lint ---------------------------------------------------------------------------------------


def test_cfn_lint_template_is_clean() -> None:
    result = subprocess.run(
        [cfn_lint(), str(TEMPLATE)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_validates_the_state_machine_definition(tmp_path: Path) -> None:
    # With DefinitionUri the SAM template names a file cfn-lint never opens; embedded as
    # Definition in a plain StateMachine, rule E3601 checks it against the ASL schema.
    def lint(definition: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        probe = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Resources": {
                "StateMachine": {
                    "Type": "AWS::StepFunctions::StateMachine",
                    "Properties": {
                        "RoleArn": "arn:aws:iam::123456789012:role/states",
                        "Definition": definition,
                        "DefinitionSubstitutions": SUBSTITUTIONS,
                    },
                }
            },
        }
        path = tmp_path / "asl-probe.json"
        path.write_text(json.dumps(probe))
        return subprocess.run([cfn_lint(), str(path)], capture_output=True, text=True, check=False)

    definition = json.loads(ASL.read_text())
    clean = lint(definition)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # ... and the probe can fail: a misspelt field is reported.
    broken = copy.deepcopy(definition)
    broken["States"]["LoadShards"]["MaxConcurrencyPathh"] = "$.max_concurrency"
    assert "E3601" in lint(broken).stdout


# --- the function -------------------------------------------------------------------------------


def test_function_packaging_and_runtime(template: dict[str, Any]) -> None:
    props = template["Resources"]["LoaderFunction"]["Properties"]
    assert props["Handler"] == "lambda_function.lambda_handler"
    assert (
        TEMPLATE.parent / props["CodeUri"]
    ).resolve() == ROOT / "dist" / "clickstream-loader.zip"
    assert props["Runtime"] == {"Ref": "PythonRuntime"}
    assert props["Architectures"] == [{"Ref": "Architecture"}]
    assert props["Timeout"] == {"Ref": "Timeout"}
    assert props["MemorySize"] == {"Ref": "MemorySize"}
    assert props["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert props["VpcConfig"] == {
        "SubnetIds": {"Ref": "VpcSubnetIds"},
        "SecurityGroupIds": {"Ref": "VpcSecurityGroupIds"},
    }
    assert props["LoggingConfig"] == {"LogGroup": {"Ref": "LoaderLogGroup"}}
    log_group = template["Resources"]["LoaderLogGroup"]["Properties"]
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_parameters_and_defaults(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    for name in (
        "VpcSubnetIds",
        "VpcSecurityGroupIds",
        "RawBucketName",
        "DbSecretArn",
        "DbSslMode",
        "DbSslRootCert",
        "MemorySize",
        "Timeout",
        "ReservedConcurrency",
        "ShardCount",
        "FreshnessLagThresholdSeconds",
        "LogRetentionDays",
        "Architecture",
    ):
        assert name in params, name
    assert params["Timeout"]["Default"] == 900
    assert params["DbSslMode"]["Default"] == "verify-full"
    assert params["Architecture"]["AllowedValues"] == ["x86_64", "arm64"]
    assert params["DbPassword"]["NoEcho"] is True


def test_environment_matches_the_loader_contract(template: dict[str, Any]) -> None:
    env = template["Resources"]["LoaderFunction"]["Properties"]["Environment"]["Variables"]
    assert env["RAW_BUCKET_NAME"] == {"Ref": "RawBucketName"}
    assert env["DW_PG_SSL"] == {"Ref": "DbSslMode"}
    assert env["DW_PG_SECRET_ARN"] == {
        "Fn::If": ["HasDbSecret", {"Ref": "DbSecretArn"}, {"Ref": "AWS::NoValue"}]
    }
    assert env["DW_PG_SSLROOTCERT"]["Fn::If"][1] == {"Ref": "DbSslRootCert"}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "ClickstreamLoader"
    assert env["POWERTOOLS_SERVICE_NAME"] == {"Ref": "ServiceName"}
    assert all(name.isupper() for name in env)


def test_loader_role_is_least_privilege(deployed: dict[str, Any]) -> None:
    role = deployed["Resources"]["LoaderFunctionRole"]
    # SAM's standard pair: CloudWatch Logs, and the ENI actions every VPC function needs.
    assert sorted(role["Properties"]["ManagedPolicyArns"]) == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    ]
    by_action = {}
    for statement in policy_statements(role):
        assert statement["Effect"] == "Allow"
        for action in actions(statement):
            assert "*" not in action, statement
            assert action not in by_action, f"{action} granted twice"
            by_action[action] = statement
    assert set(by_action) == {
        "s3:ListBucket",
        "s3:GetObject",
        "secretsmanager:GetSecretValue",
        "sqs:SendMessage",
    }

    listing = by_action["s3:ListBucket"]
    assert listing["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RawBucketName}"}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "events/*"}}

    reading = by_action["s3:GetObject"]
    assert reading["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${RawBucketName}/events/*"
    }
    assert "Condition" not in reading

    secret = by_action["secretsmanager:GetSecretValue"]
    assert secret["Resource"] == [
        {"Fn::If": ["HasDbSecret", {"Ref": "DbSecretArn"}, {"Ref": "AWS::NoValue"}]},
        {"Fn::If": ["HasErasureKey", {"Ref": "ErasureKeySecretArn"}, {"Ref": "AWS::NoValue"}]},
    ]

    dlq = by_action["sqs:SendMessage"]
    assert dlq["Resource"] == {"Fn::GetAtt": ["LoaderDeadLetterQueue", "Arn"]}


def test_secret_statement_only_exists_with_a_secret(deployed: dict[str, Any]) -> None:
    role = deployed["Resources"]["LoaderFunctionRole"]
    conditional = [
        s
        for p in role["Properties"]["Policies"]
        for s in p["PolicyDocument"]["Statement"]
        if "Fn::If" in s
    ]
    assert len(conditional) == 1
    condition, when_set, when_unset = conditional[0]["Fn::If"]
    assert condition == "HasAnySecret"
    assert when_set["Action"] == "secretsmanager:GetSecretValue"
    assert when_unset == {"Ref": "AWS::NoValue"}


def test_no_role_grants_wildcard_actions(deployed: dict[str, Any]) -> None:
    roles = resources_of_type(deployed, "AWS::IAM::Role")
    assert set(roles) >= {"LoaderFunctionRole", "LoadHourStateMachineRole"}
    for name, role in roles.items():
        for statement in policy_statements(role):
            for action in actions(statement):
                assert "*" not in action, (name, statement)
            assert statement.get("Resource") != "*", (name, statement)


def test_only_the_opt_in_erasure_function_may_delete_and_with_its_own_role(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    assert template["Parameters"]["Erasure"]["Default"] == "false"
    function = template["Resources"]["ErasureFunction"]
    assert function["Condition"] == "ErasureEnabled"
    assert "Events" not in function["Properties"]  # invoked by a person's request only
    role = deployed["Resources"]["ErasureFunctionRole"]
    by_action = {a: s for s in policy_statements(role) for a in actions(s)}
    assert set(by_action) == {
        "s3:ListBucket",
        "s3:ListBucketVersions",
        "s3:GetBucketVersioning",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "secretsmanager:GetSecretValue",
    }
    events = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RawBucketName}/events/*"}
    assert by_action["s3:DeleteObject"]["Resource"] == events
    assert by_action["s3:DeleteObjectVersion"]["Resource"] == events
    assert by_action["s3:ListBucketVersions"]["Condition"] == {
        "StringLike": {"s3:prefix": "events/*"}
    }
    assert by_action["secretsmanager:GetSecretValue"]["Resource"] == [
        {"Ref": "ErasureDbSecretArn"},
        {"Ref": "ErasureKeySecretArn"},
    ]
    env = function["Properties"]["Environment"]["Variables"]
    assert env["DW_PG_SECRET_ARN"] == {"Ref": "ErasureDbSecretArn"}  # its own login
    assert "DW_PG_PASSWORD" not in env
    # The hourly and event roles stay read-only on S3.
    for name in ("LoaderFunctionRole", "EventLoaderFunctionRole"):
        granted = {a for s in policy_statements(deployed["Resources"][name]) for a in actions(s)}
        assert not {a for a in granted if "Delete" in a and a.startswith("s3:")}, name


def test_state_machine_may_only_invoke_the_loader(deployed: dict[str, Any]) -> None:
    role = deployed["Resources"]["LoadHourStateMachineRole"]
    assert role["Properties"].get("ManagedPolicyArns", []) == []
    statements = list(policy_statements(role))
    assert len(statements) == 1
    assert actions(statements[0]) == ["lambda:InvokeFunction"]
    assert statements[0]["Resource"] == {"Fn::GetAtt": ["LoaderFunction", "Arn"]}


def test_async_failures_go_to_the_dead_letter_queue(deployed: dict[str, Any]) -> None:
    config = deployed["Resources"]["LoaderFunctionEventInvokeConfig"]["Properties"]
    assert config["FunctionName"] == {"Ref": "LoaderFunction"}
    assert config["MaximumRetryAttempts"] == 2  # the AsyncRetryAttempts default
    assert config["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["LoaderDeadLetterQueue", "Arn"]
    }
    queue = deployed["Resources"]["LoaderDeadLetterQueue"]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert queue["Properties"]["MessageRetentionPeriod"] == 1209600


def test_one_hourly_schedule_enabled_per_target(deployed: dict[str, Any]) -> None:
    rules = resources_of_type(deployed, "AWS::Events::Rule")
    schedules = [
        r
        for r in rules.values()
        if "ScheduleExpression" in r["Properties"] and r.get("Condition") != "MaintenanceEnabled"
    ]
    assert len(schedules) == 2
    targets = {}
    for rule in schedules:
        props = rule["Properties"]
        assert props["ScheduleExpression"] == SCHEDULE
        condition, enabled, disabled = props["State"]["Fn::If"]
        assert (enabled, disabled) == ("ENABLED", "DISABLED")
        (target,) = props["Targets"]
        targets[condition] = target["Arn"]
    assert targets == {
        "ScheduleOnFunction": {"Fn::GetAtt": ["LoaderFunction", "Arn"]},
        "ScheduleOnStateMachine": {"Ref": "LoadHourStateMachine"},
    }
    conditions = deployed["Conditions"]
    assert conditions["ScheduleOnFunction"] == {
        "Fn::Equals": [{"Ref": "ScheduleTarget"}, "Function"]
    }
    assert conditions["ScheduleOnStateMachine"] == {
        "Fn::Equals": [{"Ref": "ScheduleTarget"}, "StateMachine"]
    }


def test_alarms(template: dict[str, Any]) -> None:
    alarms = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"]
        for a in resources_of_type(template, "AWS::CloudWatch::Alarm").values()
        if "Condition" not in a  # the opt-in path's alarms: test_near_real_time_alarms
    }
    errors = alarms[("AWS/Lambda", "Errors")]
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "LoaderFunction"}}]

    dlq = alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["LoaderDeadLetterQueue", "QueueName"]}

    freshness = alarms[("ClickstreamLoader", "FreshnessLagSeconds")]
    assert freshness["Threshold"] == {"Ref": "FreshnessLagThresholdSeconds"}
    assert freshness["ComparisonOperator"] == "GreaterThanThreshold"
    # Powertools adds the `service` dimension to every EMF metric; the alarm must match it.
    assert freshness["Dimensions"] == [{"Name": "service", "Value": {"Ref": "ServiceName"}}]
    # An hour without a datapoint (no run at all) counts as stale unless the team opts out.
    assert freshness["TreatMissingData"] == {"Ref": "FreshnessMissingData"}
    assert template["Parameters"]["FreshnessMissingData"]["Default"] == "breaching"

    failed = alarms[("AWS/States", "ExecutionsFailed")]
    assert failed["Dimensions"] == [
        {"Name": "StateMachineArn", "Value": {"Ref": "LoadHourStateMachine"}}
    ]


# --- the near-real-time opt-in ------------------------------------------------------------------

NRT_RESOURCES = {
    "EventDeadLetterQueue",
    "EventQueue",
    "ObjectCreatedRule",
    "EventQueuePolicy",
    "EventLoaderLogGroup",
    "EventLoaderFunction",
    "EventSourceMapping",
    "EventDeadLetterQueueDepthAlarm",
    "EventQueueAgeAlarm",
    "EventLoaderErrorsAlarm",
}


def test_near_real_time_is_opt_in(template: dict[str, Any], deployed: dict[str, Any]) -> None:
    assert template["Parameters"]["NearRealTime"]["Default"] == "false"
    assert template["Conditions"]["NearRealTimeEnabled"] == {
        "Fn::Equals": [{"Ref": "NearRealTime"}, "true"]
    }
    conditional = {
        k for k, v in template["Resources"].items() if v.get("Condition") == "NearRealTimeEnabled"
    }
    assert conditional == NRT_RESOURCES
    assert all(template["Resources"][k]["Condition"] == "NearRealTimeEnabled" for k in conditional)
    # ... and so is everything SAM generates for the event function (its role above all)
    generated = {k for k, v in deployed["Resources"].items() if k.startswith("EventLoader")}
    assert generated >= {"EventLoaderFunction", "EventLoaderFunctionRole"}
    for name in generated:
        assert deployed["Resources"][name].get("Condition") == "NearRealTimeEnabled", name
    outputs = {
        k for k, v in template["Outputs"].items() if v.get("Condition") == "NearRealTimeEnabled"
    }
    assert outputs == {"EventQueueUrl", "EventDeadLetterQueueUrl", "EventLoaderFunctionName"}


def test_event_source_mapping_reports_batch_item_failures_within_bounds(
    template: dict[str, Any],
) -> None:
    mapping = template["Resources"]["EventSourceMapping"]
    assert mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    props = mapping["Properties"]
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
    assert props["FunctionName"] == {"Ref": "EventLoaderFunction"}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["BatchSize"] == {"Ref": "EventBatchSize"}
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "EventBatchingWindowSeconds"}
    assert props["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "EventMaxConcurrency"}}
    params = template["Parameters"]
    # Lambda's own bounds: a batch over 10 needs a window of at least 1 s, concurrency 2-1000
    batch, window = params["EventBatchSize"], params["EventBatchingWindowSeconds"]
    assert batch["Default"] <= 10 or window["Default"] >= 1
    assert (batch["MinValue"], batch["MaxValue"]) == (1, 10000)
    assert (window["MinValue"], window["MaxValue"]) == (0, 300)
    concurrency = params["EventMaxConcurrency"]
    assert (concurrency["MinValue"], concurrency["MaxValue"]) == (2, 1000)
    # the default batch is one MAX_RECORDS_PER_BATCH transaction (500 events of one object each)
    assert batch["Default"] <= 500


def test_event_queue_redrives_to_its_dead_letter_queue_after_the_function_timeout(
    template: dict[str, Any],
) -> None:
    queue = template["Resources"]["EventQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["EventDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "EventMaxReceiveCount"},
    }
    assert queue["VisibilityTimeout"] == {"Ref": "EventQueueVisibilityTimeout"}
    assert queue["SqsManagedSseEnabled"] is True
    params = template["Parameters"]
    # A message must stay hidden while an invocation may still hold it (AWS: 6x the timeout)
    assert params["EventQueueVisibilityTimeout"]["Default"] >= (
        6 * params["EventFunctionTimeout"]["Default"]
    )
    dlq = template["Resources"]["EventDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == 1209600
    function = template["Resources"]["EventLoaderFunction"]["Properties"]
    assert function["Timeout"] == {"Ref": "EventFunctionTimeout"}


def test_eventbridge_rule_sends_only_object_created_under_events_of_the_raw_bucket(
    template: dict[str, Any],
) -> None:
    rule = template["Resources"]["ObjectCreatedRule"]["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {
            "bucket": {"name": [{"Ref": "RawBucketName"}]},
            "object": {"key": [{"prefix": "events/"}]},
        },
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["EventDeadLetterQueue", "Arn"]}}
    # Only that rule may send to the queues: the EventBridge service, for that rule's ARN
    policy = template["Resources"]["EventQueuePolicy"]["Properties"]
    assert policy["Queues"] == [{"Ref": "EventQueue"}, {"Ref": "EventDeadLetterQueue"}]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == [
        {"Fn::GetAtt": ["EventQueue", "Arn"]},
        {"Fn::GetAtt": ["EventDeadLetterQueue", "Arn"]},
    ]
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ObjectCreatedRule", "Arn"]}}
    }


def test_event_loader_role_is_least_privilege(deployed: dict[str, Any]) -> None:
    role = deployed["Resources"]["EventLoaderFunctionRole"]
    # No AWSLambdaSQSQueueExecutionRole (its resource is "*"): SAM's pair only
    assert sorted(role["Properties"]["ManagedPolicyArns"]) == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    ]
    by_action = {}
    for statement in policy_statements(role):
        assert statement["Effect"] == "Allow"
        for action in actions(statement):
            assert action not in by_action, f"{action} granted twice"
            by_action[action] = statement
    assert set(by_action) == {
        "s3:ListBucket",
        "s3:GetObject",
        "secretsmanager:GetSecretValue",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    loader = {
        a: s
        for s in policy_statements(deployed["Resources"]["LoaderFunctionRole"])
        for a in actions(s)
    }
    for action in ("s3:ListBucket", "s3:GetObject", "secretsmanager:GetSecretValue"):
        assert by_action[action] == loader[action], action  # the hourly function's grants
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"):
        assert by_action[action]["Resource"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}


def test_event_loader_runs_the_same_code_with_the_same_environment(
    template: dict[str, Any],
) -> None:
    hourly = template["Resources"]["LoaderFunction"]["Properties"]
    event = template["Resources"]["EventLoaderFunction"]["Properties"]
    for name in ("CodeUri", "Handler", "Runtime", "Architectures", "MemorySize", "VpcConfig"):
        assert event[name] == hourly[name], name
    env = dict(event["Environment"]["Variables"])
    assert env.pop("SAFETY_MARGIN_MS") == "10000"
    assert env == hourly["Environment"]["Variables"]
    assert "ReservedConcurrentExecutions" not in event  # MaximumConcurrency bounds it
    assert "Events" not in event  # the mapping is declared on its own (least privilege)
    assert event["LoggingConfig"] == {"LogGroup": {"Ref": "EventLoaderLogGroup"}}


def test_near_real_time_alarms(template: dict[str, Any]) -> None:
    alarms = {
        name: a["Properties"]
        for name, a in resources_of_type(template, "AWS::CloudWatch::Alarm").items()
        if a.get("Condition") == "NearRealTimeEnabled"
    }
    dlq = alarms["EventDeadLetterQueueDepthAlarm"]
    assert (dlq["Namespace"], dlq["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert dlq["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventDeadLetterQueue", "QueueName"]}}
    ]
    assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    age = alarms["EventQueueAgeAlarm"]
    assert (age["Namespace"], age["MetricName"]) == ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert age["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventQueue", "QueueName"]}}
    ]
    assert age["Threshold"] == {"Ref": "EventQueueAgeThresholdSeconds"}
    assert age["Statistic"] == "Maximum"
    errors = alarms["EventLoaderErrorsAlarm"]
    assert errors["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": "EventLoaderFunction"}}
    ]
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }


def test_state_machine_substitutions_match_the_definition(template: dict[str, Any]) -> None:
    props = template["Resources"]["LoadHourStateMachine"]["Properties"]
    assert (TEMPLATE.parent / props["DefinitionUri"]).resolve() == ASL
    placeholders = set(re.findall(r"\$\{(\w+)\}", ASL.read_text()))
    assert placeholders == set(props["DefinitionSubstitutions"])
    assert props["DefinitionSubstitutions"]["LoaderFunctionArn"] == {
        "Fn::GetAtt": ["LoaderFunction", "Arn"]
    }
    assert placeholders == set(SUBSTITUTIONS)


# --- the state machine: graph -------------------------------------------------------------------


def load_definition(substitutions: dict[str, str] | None = None) -> dict[str, Any]:
    text = ASL.read_text()
    for name, value in (substitutions or {}).items():
        text = text.replace("${" + name + "}", value)
    return json.loads(text)


def scopes(machine: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """The top-level machine and every nested Map/Parallel processor, each a StartAt+States."""
    yield path or "<top>", machine
    for name, state in machine["States"].items():
        if state["Type"] == "Map":
            processor = state.get("ItemProcessor") or state.get("Iterator")
            assert processor is not None, f"Map {name} has no ItemProcessor"
            yield from scopes(processor, f"{path}/{name}")
        for i, branch in enumerate(state.get("Branches", [])):
            yield from scopes(branch, f"{path}/{name}[{i}]")


def transitions(state: dict[str, Any]) -> list[str]:
    targets = [state["Next"]] if "Next" in state else []
    targets += [choice["Next"] for choice in state.get("Choices", [])]
    targets += [state["Default"]] if "Default" in state else []
    targets += [catcher["Next"] for catcher in state.get("Catch", [])]
    return targets


def test_every_scope_is_a_well_formed_graph() -> None:
    machine = load_definition()
    for scope_name, scope in scopes(machine):
        states = scope["States"]
        assert scope["StartAt"] in states, scope_name
        terminal = []
        for name, state in states.items():
            kind = state["Type"]
            for target in transitions(state):
                assert target in states, f"{scope_name}/{name} -> missing {target}"
            if kind in ("Succeed", "Fail"):
                assert "Next" not in state and "End" not in state, name
                terminal.append(name)
            elif kind == "Choice":
                assert state["Choices"] and "End" not in state, name
            else:
                assert ("Next" in state) != (state.get("End") is True), f"{name}: Next xor End"
                if state.get("End"):
                    terminal.append(name)
        assert terminal, f"{scope_name} never ends"
        reachable, todo = set(), [scope["StartAt"]]
        while todo:
            name = todo.pop()
            if name not in reachable:
                reachable.add(name)
                todo.extend(transitions(states[name]))
        assert reachable == set(states), f"{scope_name}: unreachable {set(states) - reachable}"


def test_tasks_invoke_the_loader_and_retry_lambda_throttling() -> None:
    machine = load_definition()
    tasks = {
        name: state
        for _, scope in scopes(machine)
        for name, state in scope["States"].items()
        if state["Type"] == "Task"
    }
    assert set(tasks) == {"PlanHour", "LoadShard", "FinalizeHour"}
    for name, task in tasks.items():
        assert task["Resource"] == "arn:aws:states:::lambda:invoke", name
        assert task["Parameters"]["FunctionName"] == "${LoaderFunctionArn}", name
        retried = {error for retrier in task["Retry"] for error in retrier["ErrorEquals"]}
        assert retried >= LAMBDA_TRANSIENT, name
    assert tasks["PlanHour"]["Parameters"]["Payload"]["action"] == "plan"
    assert tasks["FinalizeHour"]["Parameters"]["Payload"]["action"] == "finalize"
    assert set(tasks["LoadShard"]["Parameters"]["Payload"]) == {"hour.$", "shard.$"}

    fan_out = machine["States"]["LoadShards"]
    assert fan_out["Type"] == "Map"
    assert "MaxConcurrencyPath" in fan_out or "MaxConcurrency" in fan_out
    assert fan_out["ItemProcessor"]["ProcessorConfig"]["Mode"] in ("INLINE", "DISTRIBUTED")


# --- the state machine: a small interpreter of the subset it uses -------------------------------


class ExecutionFailed(Exception):
    def __init__(self, error: str, cause: str) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause


def read_path(path: str, data: Any, context: dict[str, Any]) -> Any:
    if path.startswith("$$"):
        data, path = context, path[1:]
    assert path == "$" or path.startswith("$."), f"unsupported path {path}"
    for part in path[2:].split(".") if path != "$" else []:
        data = data[part]
    return data


def write_path(path: str | None, data: Any, result: Any) -> Any:
    if path is None:
        return data
    if path == "$":
        return result
    assert path.startswith("$.") and "." not in path[2:], f"unsupported ResultPath {path}"
    return {**data, path[2:]: result}


_INTRINSIC = re.compile(r"^(States\.\w+)\((.*)\)$")
_ARGUMENT = re.compile(r"\s*('(?:[^'\\]|\\.)*'|[^,]+)\s*(?:,|$)")


def evaluate(expression: str, data: Any, context: dict[str, Any]) -> Any:
    match = _INTRINSIC.match(expression)
    if match is None:
        return read_path(expression, data, context)
    name, raw_args = match.groups()
    args: list[Any] = []
    for token in _ARGUMENT.findall(raw_args):
        if token.startswith("'"):
            args.append(token[1:-1])
        elif token.startswith("$"):
            args.append(read_path(token, data, context))
        else:
            args.append(json.loads(token))
    functions: dict[str, Callable[..., Any]] = {
        "States.StringToJson": json.loads,
        "States.ArrayLength": len,
        "States.MathAdd": lambda a, b: a + b,
        "States.Format": lambda template, *values: template.replace("{}", "%s") % values,
    }
    assert name in functions, f"the interpreter does not know {name}"
    return functions[name](*args)


def render(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """Parameters / ResultSelector / ItemSelector: keys ending .$ are evaluated."""
    if isinstance(template, dict):
        rendered = {}
        for key, value in template.items():
            if key.endswith(".$"):
                rendered[key[:-2]] = evaluate(value, data, context)
            else:
                rendered[key] = render(value, data, context)
        return rendered
    return template


def matches(rule: dict[str, Any], data: Any, context: dict[str, Any]) -> bool:
    if "And" in rule:
        return all(matches(r, data, context) for r in rule["And"])
    if "Or" in rule:
        return any(matches(r, data, context) for r in rule["Or"])
    value = read_path(rule["Variable"], data, context)
    if "StringEquals" in rule:
        return isinstance(value, str) and value == rule["StringEquals"]
    if "NumericLessThan" in rule:
        return isinstance(value, int | float) and value < rule["NumericLessThan"]
    raise AssertionError(f"the interpreter does not know choice rule {rule}")


def run(scope: dict[str, Any], data: Any, invoke: Callable[[str, Any], Any], context: Any) -> Any:
    name = scope["StartAt"]
    while True:
        state = scope["States"][name]
        kind = state["Type"]
        if kind == "Task":
            params = render(state["Parameters"], data, context)
            result = {"Payload": invoke(params["FunctionName"], params["Payload"])}
            if "ResultSelector" in state:
                result = render(state["ResultSelector"], result, context)
            data = write_path(state.get("ResultPath", "$"), data, result)
        elif kind == "Map":
            items = read_path(state["ItemsPath"], data, context)
            limit = read_path(state["MaxConcurrencyPath"], data, context)
            assert isinstance(limit, int) and limit >= 0, "MaxConcurrencyPath must give an int"
            results = []
            for index, item in enumerate(items):
                item_context = {**context, "Map": {"Item": {"Index": index, "Value": item}}}
                item_input = render(state["ItemSelector"], data, item_context)
                results.append(run(state["ItemProcessor"], item_input, invoke, item_context))
            data = write_path(state.get("ResultPath", "$"), data, results)
        elif kind == "Choice":
            name = next(
                (c["Next"] for c in state["Choices"] if matches(c, data, context)),
                state.get("Default"),
            )
            assert name is not None, "no choice matched and no Default"
            continue
        elif kind == "Pass":
            data = render(state["Parameters"], data, context) if "Parameters" in state else data
        elif kind == "Succeed":
            return data
        elif kind == "Fail":
            cause = evaluate(state["CausePath"], data, context) if "CausePath" in state else ""
            raise ExecutionFailed(state["Error"], cause or state.get("Cause", ""))
        else:
            raise AssertionError(f"the interpreter does not know {kind} states")
        if "OutputPath" in state:
            data = read_path(state["OutputPath"], data, context)
        if state.get("End"):
            return data
        name = state["Next"]


class FakeLoader:
    """Plays the loader's contract: plan, shard loads (partial `partial_passes` times), finalize."""

    def __init__(
        self,
        partial_passes: dict[int, int],
        failing: frozenset[int] = frozenset(),
        retired: bool = False,
    ):
        self.partial_passes = dict(partial_passes)
        self.failing = failing
        self.retired = retired  # the hour is past retention: every answer says so
        self.calls: list[dict[str, Any]] = []

    def __call__(self, function_name: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert function_name == FUNCTION_ARN
        self.calls.append(payload)
        if payload.get("action") == "plan":
            assert payload["time"] == "2026-11-24T14:05:00Z"
            count = payload["shard_count"]
            assert isinstance(count, int)
            hour = "2026-11-24T13"
            shards = [
                {"hour": hour, "shard": {"index": i, "count": count, "by": "range"}}
                for i in range(count)
            ]
            return {"hour": hour, "shards": shards}
        if payload.get("action") == "finalize":
            state = "retired" if self.retired else "complete"
            return {"hour": payload["hour"], "state": state, "shards": payload["shard_count"]}
        index = payload["shard"]["index"]
        if self.retired:
            state = "retired"
        elif index in self.failing:
            state = "failed"
        elif self.partial_passes.get(index, 0) > 0:
            self.partial_passes[index] -= 1
            state = "partial"
        else:
            state = "complete"
        return {"hour": payload["hour"], "state": state, "inserted": 10, "resume_after": None}

    def shard_calls(self, index: int) -> int:
        return sum(1 for c in self.calls if "shard" in c and c["shard"]["index"] == index)


SCHEDULED_EVENT = {
    "source": "aws.events",
    "detail-type": "Scheduled Event",
    "time": "2026-11-24T14:05:00Z",
    "detail": {},
}


def test_execution_plans_loads_every_shard_and_finalizes() -> None:
    loader = FakeLoader(partial_passes={1: 2})

    output = run(load_definition(SUBSTITUTIONS), SCHEDULED_EVENT, loader, {})

    assert loader.calls[0] == {"action": "plan", "time": "2026-11-24T14:05:00Z", "shard_count": 3}
    assert [loader.shard_calls(i) for i in range(3)] == [1, 3, 1]  # shard 1: partial twice
    for call in loader.calls[1:-1]:
        assert set(call) == {"hour", "shard"}  # exactly the handler's shard event
        assert call["shard"]["count"] == 3 and call["shard"]["by"] == "range"  # as planned
    assert loader.calls[-1] == {"action": "finalize", "hour": "2026-11-24T13", "shard_count": 3}
    assert output == {"hour": "2026-11-24T13", "state": "complete", "shards": 3}


def test_execution_fails_when_a_shard_fails_and_never_finalizes() -> None:
    loader = FakeLoader(partial_passes={}, failing=frozenset({2}))

    with pytest.raises(ExecutionFailed) as excinfo:
        run(load_definition(SUBSTITUTIONS), SCHEDULED_EVENT, loader, {})

    assert excinfo.value.error == "ShardNotLoaded"
    assert "shard 2 ended failed" in excinfo.value.cause
    assert all(c.get("action") != "finalize" for c in loader.calls)


def test_a_shard_that_never_completes_stops_after_a_bounded_number_of_passes() -> None:
    loader = FakeLoader(partial_passes={0: 10_000})

    with pytest.raises(ExecutionFailed, match="ShardNotLoaded") as excinfo:
        run(load_definition(SUBSTITUTIONS), SCHEDULED_EVENT, loader, {})

    assert loader.shard_calls(0) == 24
    assert "ended partial after 24 passes" in excinfo.value.cause


def test_an_hour_past_retention_ends_retired_without_failing() -> None:
    """Shards of a retired hour load nothing and say `retired`: the execution succeeds, and the
    finalize (which records nothing for a retired hour) answers `retired` too."""
    loader = FakeLoader(partial_passes={}, retired=True)

    output = run(load_definition(SUBSTITUTIONS), SCHEDULED_EVENT, loader, {})

    assert [loader.shard_calls(i) for i in range(3)] == [1, 1, 1]
    assert loader.calls[-1]["action"] == "finalize"
    assert output["state"] == "retired"


# --- partition maintenance (opt-in) -------------------------------------------------------------

MAINTENANCE_RESOURCES = {"MaintenanceLogGroup", "MaintenanceFunction", "MaintenanceErrorsAlarm"}


def test_maintenance_is_opt_in_with_its_own_credentials(
    template: dict[str, Any], deployed: dict[str, Any]
) -> None:
    params = template["Parameters"]
    assert params["Maintenance"]["Default"] == "false"
    assert template["Conditions"]["MaintenanceEnabled"] == {
        "Fn::Equals": [{"Ref": "Maintenance"}, "true"]
    }
    for name in MAINTENANCE_RESOURCES:
        assert template["Resources"][name]["Condition"] == "MaintenanceEnabled", name
    generated = {k for k in deployed["Resources"] if k.startswith("MaintenanceFunction")}
    assert generated >= {"MaintenanceFunctionRole", "MaintenanceFunctionDailyMaintenance"}
    for name in generated:
        assert deployed["Resources"][name].get("Condition") == "MaintenanceEnabled", name
    # Turned on, it must have the owner's secret: never the loader's credentials.
    rule = template["Rules"]["MaintenanceCredentials"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "Maintenance"}, "true"]}
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MaintenanceSecretArn"}, ""]}]
    }
    env = template["Resources"]["MaintenanceFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DW_PG_SECRET_ARN"] == {"Ref": "MaintenanceSecretArn"}
    assert not {"DW_PG_USER", "DW_PG_PASSWORD", "RAW_BUCKET_NAME"} & set(env)


def test_maintenance_role_reads_the_owner_secret_and_nothing_else(
    deployed: dict[str, Any],
) -> None:
    role = deployed["Resources"]["MaintenanceFunctionRole"]
    assert sorted(role["Properties"]["ManagedPolicyArns"]) == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole",
    ]
    (statement,) = policy_statements(role)
    assert actions(statement) == ["secretsmanager:GetSecretValue"]
    assert statement["Resource"] == {"Ref": "MaintenanceSecretArn"}


def test_the_maintenance_schedule_sends_the_payload_the_handler_reads(
    template: dict[str, Any],
) -> None:
    from loader.maintenance import options_from_event

    props = template["Resources"]["MaintenanceFunction"]["Properties"]
    schedule = props["Events"]["DailyMaintenance"]["Properties"]
    assert schedule["Schedule"] == {"Ref": "MaintenanceSchedule"}
    params = template["Parameters"]
    payload = schedule["Input"]["Fn::Sub"]
    for name in ("MaintenanceKeepDays", "MaintenanceAheadDays"):
        payload = payload.replace("${" + name + "}", str(params[name]["Default"]))
    event = json.loads(payload)

    options = options_from_event(event)

    assert event["action"] == "maintain"
    assert (options.keep_days, options.ahead_days) == (90, 7)
    assert not options.allow_shorter and not options.dry_run
    assert props["ReservedConcurrentExecutions"] == 1
