"""LoRA adapters as files: ``catalog`` finds an adapter by name in ``model.lora``'s
folders, for the ingress (``/v1/models``, 404s) and the engine (loads) alike."""
