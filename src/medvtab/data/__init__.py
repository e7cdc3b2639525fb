"""Tasks: loading images and labels into memory, with splits."""
from medvtab.data.loading import load_task
from medvtab.data.taskdata import Split, TaskData

__all__ = ["Split", "TaskData", "load_task"]
