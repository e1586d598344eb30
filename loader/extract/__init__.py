"""Extract: S3. List an hour's keys and fetch their bodies, through boto3 or the AWS CRT.

See docs/architecture.md: this stage imports only the foundation (`loader.common`,
`loader.config`), never transform, load or the pipeline.
"""
