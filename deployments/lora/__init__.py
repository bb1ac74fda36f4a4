"""deployments/lora"""
