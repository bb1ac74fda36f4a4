"""deployments/engine/simulated"""
