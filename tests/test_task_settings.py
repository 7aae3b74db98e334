"""One source of task settings in the worker: a task changed on fw.tasks changes the region sent to detectors and
the frame limit retention keeps, not only the rules (the config file is the fallback)."""

from __future__ import annotations

from pathlib import Path

from framewatch.agents.resources import Resources
from framewatch.schemas.config import load_config
from tests.conftest import write_config

TASK = """[frame_extractor]
max_frame_count = 100
[[frame_extractor.tasks]]
id = "gate"
task_type = "area_intrusion"
rtsp_url = "rtsp://cam/gate"
region = [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]
max_frame_count = 5
"""


def test_fw_tasks_wins_over_the_config_for_regions_and_frame_limits(tmp_path: Path) -> None:
    config, _ = load_config(write_config(tmp_path / "c.toml", TASK), environ={})
    resources = Resources(config)
    assert resources.client.region_of("gate") == [(0, 0.5), (1, 0.5), (1, 1), (0, 1)]
    assert resources.frame_limit("gate") == 5 and resources.frame_limit("elsewhere") == 100

    changed = config.task("gate").model_copy(update={"region": [(0, 0), (0.5, 0), (0.5, 0.5)], "max_frame_count": 2})
    resources.catalog.values["gate"] = changed  # as `framewatch tasks update gate --set …` puts it on fw.tasks
    assert resources.client.region_of("gate") == [(0, 0), (0.5, 0), (0.5, 0.5)]
    assert resources.frame_limit("gate") == 2
