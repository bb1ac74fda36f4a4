"""deployments/openai_api"""
