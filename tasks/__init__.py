"""What we train on: environments, scripted experts, task specs.

`get_task("metaworld/push")`, `get_task("obstacle-reach")`,
`get_task("metaworld-hard/push", noise="high")`; `known_tasks()` lists all.
"""

from __future__ import annotations

from tasks.spec import Expert, TaskSpec

METAWORLD_PREFIX = "metaworld/"
HARD_PREFIX = "metaworld-hard/"


def known_tasks() -> list[str]:
    from tasks.metaworld import task_names
    from tasks.metaworld_hard import task_names as hard_names

    return (
        ["obstacle-reach"]
        + [METAWORLD_PREFIX + n for n in task_names()]
        + [HARD_PREFIX + n for n in hard_names()]
    )


def get_task(name: str, **options) -> TaskSpec:
    """The TaskSpec for a task name; unknown names raise ValueError listing known ones.
    `options` (strategy, noise, starts) select a variant of a metaworld-hard task."""
    if name.startswith(HARD_PREFIX):
        from tasks.metaworld_hard import hard_spec, task_names

        if name.removeprefix(HARD_PREFIX).split(":")[0] in task_names():
            return hard_spec(name, **options)
    elif options:
        raise ValueError(f"task {name!r} takes no options, got {options}; {HARD_PREFIX}* do")
    if name == "obstacle-reach":
        from tasks.obstacle_reach import obstacle_reach_spec

        return obstacle_reach_spec()
    if name.startswith(METAWORLD_PREFIX):
        from tasks.metaworld import metaworld_spec, task_names

        if name.removeprefix(METAWORLD_PREFIX) in task_names():
            return metaworld_spec(name.removeprefix(METAWORLD_PREFIX))
    raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}")


__all__ = ["Expert", "TaskSpec", "get_task", "known_tasks"]
