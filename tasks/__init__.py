"""What we train on: environments, scripted experts, task specs.

`get_task("metaworld/push")`, `get_task("obstacle-reach")`; `known_tasks()` lists all.
"""

from __future__ import annotations

from tasks.spec import Expert, TaskSpec

METAWORLD_PREFIX = "metaworld/"


def known_tasks() -> list[str]:
    from tasks.metaworld import task_names

    return ["obstacle-reach"] + [METAWORLD_PREFIX + n for n in task_names()]


def get_task(name: str) -> TaskSpec:
    """The TaskSpec for a task name; unknown names raise ValueError listing known ones."""
    if name == "obstacle-reach":
        from tasks.obstacle_reach import obstacle_reach_spec

        return obstacle_reach_spec()
    if name.startswith(METAWORLD_PREFIX):
        from tasks.metaworld import metaworld_spec, task_names

        if name.removeprefix(METAWORLD_PREFIX) in task_names():
            return metaworld_spec(name.removeprefix(METAWORLD_PREFIX))
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")


__all__ = ["Expert", "TaskSpec", "get_task", "known_tasks"]
