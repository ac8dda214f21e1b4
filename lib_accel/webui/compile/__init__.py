"""WebUI glue for torch.compile: install, panel, cache folder, warm requests, Lora forwards."""
