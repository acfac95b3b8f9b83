"""The agent spec, its compiler to Prefect deployments, work pools and run queries."""
