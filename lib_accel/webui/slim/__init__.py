"""WebUI glue for checkpoint slimming: tab panel and image comparison."""
