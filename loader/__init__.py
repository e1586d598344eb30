"""clickstream-loader: hourly loads of raw clickstream events from S3 into PostgreSQL."""

__version__ = "0.1.0"
