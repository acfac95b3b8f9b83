"""What runs on workers: the agent runtime flow, its tools and models.

Imports nothing from the control plane (`deployments`, `mcp_server`): tenant
containers carry only this package and `blocks`.
"""
