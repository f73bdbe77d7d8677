"""Text-classification tasks: the bundled 8-task data and a loader for any folder of tasks."""

from eigenmix.data.loader import Example, Task, bundled_data_dir, load_task, load_tasks, task_names

__all__ = ["Example", "Task", "bundled_data_dir", "load_task", "load_tasks", "task_names"]
