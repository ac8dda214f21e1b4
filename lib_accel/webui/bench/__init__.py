"""WebUI glue for the A/B benchmark: tab panel, session and in-process target."""
