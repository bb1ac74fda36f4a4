"""deployments/core"""
