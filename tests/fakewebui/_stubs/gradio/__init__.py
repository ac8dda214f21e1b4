"""Minimal stand-in for gradio, used by the harness ONLY when gradio is not installed. Components just keep
their arguments; layout blocks are context managers. Not part of the WebUI fake proper."""

__version__ = "3.41.2-stub"
IS_STUB = True


class Component:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, *args, **kwargs):
        return self

    def change(self, *args, **kwargs):
        return self

    click = input = submit = then = select = release = change

    @classmethod
    def update(cls, **kwargs):
        return {"__type__": "update", **kwargs}


for _name in (
    "Checkbox",
    "CheckboxGroup",
    "Radio",
    "Slider",
    "Dropdown",
    "Textbox",
    "Number",
    "HTML",
    "Markdown",
    "Button",
    "JSON",
    "Image",
    "Gallery",
    "State",
    "Label",
    "File",
    "Dataframe",
    "BarPlot",
    "Blocks",
    "Row",
    "Column",
    "Group",
    "Accordion",
    "Tab",
    "Tabs",
    "TabItem",
    "Box",
):
    globals()[_name] = type(_name, (Component,), {})


def update(**kwargs):
    return {"__type__": "update", **kwargs}
