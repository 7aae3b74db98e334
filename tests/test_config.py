from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framewatch.schemas.config import ConfigError, load_config, mask_url, masked
from framewatch.schemas.tasks import TaskType
from tests.conftest import ROOT, write_config

SEED = ROOT / "tests" / "data" / "seed-config.toml"


def test_seed_config_loads_as_it_is() -> None:
    config, ignored = load_config(SEED, environ={})
    extractor, analysis = config.frame_extractor, config.ai_analysis
    assert extractor.interval_ms == 100 and extractor.max_frame_count == 1000
    assert extractor.task_types == list(TaskType)  # all nine Chinese names resolved, in order
    assert extractor.minio.endpoint == "172.16.5.207:9000" and extractor.minio.bucket == "images"
    assert extractor.minio.secret_key.get_secret_value() == "admin123"
    assert (analysis.mq_topic, analysis.max_concurrent_infer, analysis.alert_batch_size) == ("easyai.alerts", 300, 100)
    assert analysis.alert_batch_interval_sec == 2 and analysis.heartbeat_timeout_sec == 60
    task = extractor.tasks[0]
    assert (task.id, task.task_type, task.interval_ms, task.max_frame_count) == ("测试1", TaskType.PEOPLE_COUNTING,
                                                                                200, 500)
    assert config.kafka_bootstrap == "172.16.5.207:9092"
    assert sorted(ignored) == ["ai_analysis.scan_interval_sec: ignored, frames arrive as events on fw.frames; "
                               "nothing scans the store",
                               "frame_extractor.output_dir: ignored, frames go to the object store only"]


@pytest.mark.parametrize("name,expected", [("区域入侵", TaskType.AREA_INTRUSION), ("area_intrusion",
                                           TaskType.AREA_INTRUSION), ("Line-Crossing", TaskType.LINE_CROSSING),
                                           ("安全帽检测", TaskType.NO_HELMET)])
def test_task_type_aliases(tmp_path: Path, name: str, expected: TaskType) -> None:
    line = "line = [[0.5, 0.0], [0.5, 1.0]]\n" if expected is TaskType.LINE_CROSSING else ""
    path = write_config(tmp_path / "c.toml",
                        f"[[frame_extractor.tasks]]\nid='a'\ntask_type='{name}'\nrtsp_url='x'\n{line}")
    assert load_config(path, environ={})[0].frame_extractor.tasks[0].task_type is expected


def test_unknown_keys_are_reported(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "[ai_analysis]\nmq_topik = 'x'\n[extra]\na = 1\n")
    _, ignored = load_config(path, environ={})
    assert ignored == ["ai_analysis.mq_topik: unknown key, ignored", "extra: unknown key, ignored"]


def test_environment_overrides_addresses_and_secrets() -> None:
    config, _ = load_config(SEED, environ={"FRAMEWATCH_KAFKA_BOOTSTRAP": "10.0.0.1:9092",
                                           "FRAMEWATCH_MINIO_SECRET_KEY": "from-env",
                                           "FRAMEWATCH_POSTGRES_DSN": "postgresql://u:pw@db/fw"})
    assert config.kafka_bootstrap == "10.0.0.1:9092"
    assert config.frame_extractor.minio.secret_key.get_secret_value() == "from-env"
    assert config.database.dsn.get_secret_value() == "postgresql://u:pw@db/fw"


@pytest.mark.parametrize("body,names", [
    ("[frame_extractor]\ninterval_ms = -5\n", "frame_extractor.interval_ms"),
    ("[[frame_extractor.tasks]]\nid='a'\ntask_type='跳舞'\nrtsp_url='x'\n",
     "frame_extractor.tasks[0] (id 'a').task_type"),
    ("[[frame_extractor.tasks]]\nid='../etc'\ntask_type='区域入侵'\nrtsp_url='x'\n", "frame_extractor.tasks[0] (id '../etc').id"),
    ("[[frame_extractor.tasks]]\nid='a'\ntask_type='区域入侵'\nrtsp_url='x'\noutput_path='..'\n",
     "output_path '..' must be a single safe path segment"),
    ("[[frame_extractor.tasks]]\nid='a'\ntask_type='区域入侵'\nrtsp_url='x'\nregion=[[0,0],[2,0],[1,1]]\n",
     "frame_extractor.tasks[0] (id 'a').region: region coordinates are normalised and must lie in 0..1"),
    ("[ai_analysis]\nmq_type = 'rabbitmq'\n", "ai_analysis.mq_type"),
    ("[frame_extractor.minio]\nbucket = 'Alert_Images'\n", "frame_extractor.minio.bucket: 'Alert_Images' is "
     "not an S3 bucket name"),
    ("[frame_extractor\n", "not valid TOML"),
    ("[framewatch]\nreplication_factor = 0\n", "framewatch.replication_factor"),
    ("[framewatch]\nreplication_factor = 2\nmin_insync_replicas = 3\n",
     "min_insync_replicas (3) cannot exceed replication_factor (2)"),
])
def test_bad_config_names_file_and_key(tmp_path: Path, body: str, names: str) -> None:
    path = write_config(tmp_path / "bad.toml", body)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert str(path) in str(error.value) and names in str(error.value)


TASK = "[[frame_extractor.tasks]]\nid='{id}'\ntask_type='{type}'\nrtsp_url='x'\n"


@pytest.mark.parametrize("task_type,settings,message", [
    ("区域入侵", "region = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]",
     "(id 'gate').region: the region crosses itself: edge 0-1 crosses edge 2-3"),
    ("区域入侵", "region = [[0.1, 0.1], [0.9, 0.1]]", "(id 'gate').region: a region needs at least 3"),
    ("绊线人数统计", "line = [[0.5, -0.1], [0.5, 1.0]]",
     "(id 'gate').line: line coordinates are normalised and must lie in 0..1"),
    ("绊线人数统计", "", "(id 'gate'): line: a line_crossing task needs a line"),
    ("绊线人数统计", "line = [[0.5, 0.5], [0.5, 0.5]]", "(id 'gate').line: a line needs two different"),
    ("区域入侵", "labels = ['persn']", "(id 'gate'): labels: unknown label 'persn'; did you mean 'person'? "),
    ("安全帽检测", "helmet_labels = ['forklift']", "(id 'gate'): helmet_labels: unknown label 'forklift'; a label your detector has beyond the vocabulary "
     "goes in extra_labels"),
    ("徘徊检测", "dwell_sec = 0", "(id 'gate').dwell_sec: Input should be greater than 0"),
    ("绊线人数统计", "line = [[0.5, 0.0], [0.5, 1.0]]\nline_direction = 'sideways'", "(id 'gate').line_direction"),
])
def test_bad_rule_settings_name_the_task_and_the_field(tmp_path: Path, task_type: str, settings: str,
                                                       message: str) -> None:
    other = TASK.format(id="fine", type="区域入侵")
    path = write_config(tmp_path / "bad.toml", other + TASK.format(id="gate", type=task_type) + settings + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert f"frame_extractor.tasks[1] {message}" in str(error.value)


def test_extra_labels_extend_the_vocabulary(tmp_path: Path) -> None:
    body = TASK.format(id="dock", type="物品遗留") + "labels = ['forklift']\nextra_labels = ['forklift']\n"
    task = load_config(write_config(tmp_path / "c.toml", body), environ={})[0].frame_extractor.tasks[0]
    assert task.watched == {"forklift"}
    assert load_config(write_config(tmp_path / "d.toml", TASK.format(id="d", type="物品遗留")),
                       environ={})[0].frame_extractor.tasks[0].watched == {"backpack", "handbag", "suitcase"}


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load_config(tmp_path / "nope.toml", environ={})


def test_masking_hides_every_secret() -> None:
    config, _ = load_config(SEED, environ={"FRAMEWATCH_POSTGRES_DSN": "postgresql://fw:s3cret@db:5432/fw"})
    shown = json.dumps(masked(config), ensure_ascii=False)
    for secret in ("admin123", "hunter2", "s3cret"):
        assert secret not in shown
    assert "rtsp://***@172.16.5.10:554/stream1" in shown
    assert mask_url("rtsp://cam.local/a") == "rtsp://cam.local/a"


@pytest.mark.parametrize("url,secret", [
    ("rtsp://admin:p@ss/w0rd@10.0.0.5:554/stream1", "p@ss/w0rd"),
    ("rtsp://admin:hunter2@cam.local", "hunter2"),
    ("http://cam.local/video.mjpg?user=admin&password=hunter2&fps=5", "hunter2"),
    ("http://cam.local/snap.jpg?token=abc123", "abc123"),
    ("host=db user=fw password=s3cret dbname=fw", "s3cret"),
    ("host=db user=fw password='s3 cret' dbname=fw", "s3 cret"),
])
def test_mask_url_hides_passwords_wherever_they_are(url: str, secret: str) -> None:
    shown = mask_url(url)
    assert secret not in shown and "***" in shown, shown


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framewatch.cli", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, cwd=ROOT)


def test_config_check_command_prints_masked_config() -> None:
    result = _cli("config", "check", str(SEED))
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["frame_extractor"]["minio"]["secret_key"] == "***"
    assert resolved["frame_extractor"]["tasks"][0]["task_type"] == "people_counting"
    assert result.stderr.count("output_dir") == 1  # reported once
    assert "admin123" not in result.stdout + result.stderr


def test_config_check_command_rejects_bad_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "bad.toml", "[ai_analysis]\nalert_batch_size = 'many'\n")
    result = _cli("config", "check", str(path))
    assert result.returncode == 2
    assert f"{path}: ai_analysis.alert_batch_size:" in result.stderr
