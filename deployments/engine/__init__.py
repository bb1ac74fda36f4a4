"""deployments/engine"""
