"""A model the user brings, run by ONNX Runtime: small graphs made here with the `onnx` helper API, one per supported
output layout, whose outputs are known (a constant per image, whatever the batch size). Boxes come back mapped
through the letterbox to the original image, labels from the label list, scores kept, NMS applied where the model
has none, a batch in one run; and the same through the service's HTTP contract."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from framewatch.detector.onnx import PADDING, ModelError, OnnxDetector, intra_op_threads, letterbox, model_input
from framewatch.schemas.contract import InferFrame, InferRequest, InferResponse
from framewatch.schemas.tasks import TaskType

SIZE = 64  # the models' input: 64 x 64
# a 128 x 64 image letterboxed into 64 x 64: scale 0.5, 16 rows of padding above and below
IMAGE = bytes(cv2.imencode(".png", np.full((64, 128, 3), 90, np.uint8))[1])


def constant_model(path: Path, outputs: dict[str, np.ndarray]) -> Path:
    """A model whose outputs are `outputs` (each with a leading batch axis of 1) repeated for every image."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]  # [batch, 1, 1, 1], all zeros
    initializers = [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph_outputs = []
    for name, value in outputs.items():
        rank = value.ndim
        initializers += [helper.make_tensor(f"{name}_value", TensorProto.FLOAT, value.shape, value.ravel().tolist()),
                         helper.make_tensor(f"{name}_shape", TensorProto.INT64, [rank], [-1] + [1] * (rank - 1))]
        nodes += [helper.make_node("Reshape", ["nothing", f"{name}_shape"], [f"{name}_zeros"]),
                  helper.make_node("Add", [f"{name}_zeros", f"{name}_value"], [name])]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *value.shape[1:]]))
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])], graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def yolo_head() -> np.ndarray:
    """[1, 4 + 2 classes, 3 anchors]: a no_helmet box, the same box again a little weaker (NMS drops it), a miss."""
    anchors = [(32, 32, 16, 32, 0.1, 0.9), (33, 32, 16, 32, 0.05, 0.8), (10, 10, 4, 4, 0.1, 0.1)]
    return np.array(anchors, np.float32).T[None]


def test_a_yolo_head_is_decoded_suppressed_and_mapped_back_through_the_letterbox(tmp_path: Path) -> None:
    detector = OnnxDetector(constant_model(tmp_path / "yolo.onnx", {"output0": yolo_head()}), ["helmet", "no_helmet"])
    assert detector.layout == "yolo" and (detector.width, detector.height) == (SIZE, SIZE)
    (found,) = detector.detect_jpegs([IMAGE])
    assert not isinstance(found, ValueError)
    (only,) = found
    assert only.label == "no_helmet" and only.score == pytest.approx(0.9)
    assert only.box == pytest.approx((0.375, 0.0, 0.625, 1.0))  # x 24..40 and y 16..48 of the 64 x 64 input


def test_end_to_end_nms_and_detr_outputs_and_a_batch_in_one_run(tmp_path: Path) -> None:
    nms = np.array([[[8, 20, 24, 44, 0.7, 1], [0, 0, 4, 4, 0.1, 0]]], np.float32)
    detector = OnnxDetector(constant_model(tmp_path / "nms.onnx", {"output0": nms}), ["person", "smoking"])
    assert detector.layout == "nms"
    batch = detector.detect_jpegs([IMAGE, b"not an image", IMAGE])
    assert isinstance(batch[1], ValueError)
    for found in (batch[0], batch[2]):
        assert not isinstance(found, ValueError)
        (only,) = found
        assert only.label == "smoking" and only.box == pytest.approx((0.125, 0.125, 0.375, 0.875))

    boxes = np.array([[[8, 20, 24, 44], [30, 20, 60, 44]]], np.float32)
    scores = np.array([[[0.1, 0.2, 0.85], [0.3, 0.1, 0.05]]], np.float32)
    detr = OnnxDetector(constant_model(tmp_path / "detr.onnx", {"boxes": boxes, "scores": scores}),
                        ["person", "bag", "fallen"])
    assert detr.layout == "detr"
    (found,) = detr.detect_jpegs([IMAGE])
    assert not isinstance(found, ValueError)
    assert [(d.label, d.score) for d in found] == [("fallen", pytest.approx(0.85)), ("person", pytest.approx(0.3))]


def test_preprocessing_in_one_pass_gives_the_step_by_step_input() -> None:
    image = np.random.default_rng(7).integers(0, 256, (576, 1024, 3), np.uint8)
    canvas, box = letterbox(image, 640, 640)
    step_by_step = np.full((640, 640, 3), PADDING, np.uint8)
    step_by_step[140:500] = cv2.resize(image, (640, 360), interpolation=cv2.INTER_LINEAR)
    assert (box.pad_x, box.pad_y, box.scale) == (0, 140, 0.625)
    assert np.array_equal(canvas, step_by_step)
    batch = model_input([canvas, canvas])
    tensor = cv2.cvtColor(step_by_step, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255.0
    assert batch.shape == (2, 3, 640, 640) and batch.dtype == np.float32
    assert np.abs(batch - tensor).max() < 1e-6


def test_a_served_model_shares_the_cores_among_its_runs_and_spins_no_thread(tmp_path: Path) -> None:
    detector = OnnxDetector(constant_model(tmp_path / "yolo.onnx", {"output0": yolo_head()}), ["a", "b"], threads=2)
    options = detector.session.get_session_options()
    assert options.intra_op_num_threads == 2 and detector.describe()["threads"] == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert [intra_op_threads(capacity, cores=16) for capacity in (1, 4, 16, 64)] == [16, 4, 1, 1]


def test_a_file_that_is_not_a_model_is_refused_with_its_name(tmp_path: Path) -> None:
    junk = tmp_path / "weights.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="weights.onnx: not a model ONNX Runtime can load"):
        OnnxDetector(junk)


async def test_the_service_runs_a_batch_behind_the_contract_and_reports_the_model(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestServer

    from framewatch.detector.service import DetectorService, DetectorSettings
    from framewatch.schemas.config import Config

    model = constant_model(tmp_path / "helmets.onnx", {"output0": yolo_head()})
    settings = DetectorSettings(service_id="helmets-1", model=model, labels=["helmet", "no_helmet"], max_batch=4,
                                task_types=[TaskType.NO_HELMET])
    service = DetectorService(settings, Config())
    app = service.app()
    app.on_startup.clear()  # no heartbeats: nothing here reads fw.services
    app.on_cleanup.clear()
    async with TestServer(app) as server:
        base = f"http://{server.host}:{server.port}"
        async with httpx.AsyncClient(timeout=10) as client:
            health = (await client.get(f"{base}/healthz")).json()
            assert health["layout"] == "yolo" and health["input"] == [SIZE, SIZE] and health["max_batch"] == 4
            assert health["labels"] == ["helmet", "no_helmet"]
            frames = [InferFrame(frame_id=f"f{i}", task_type=TaskType.NO_HELMET,
                                 image_b64=base64.b64encode(IMAGE).decode()) for i in range(3)]
            answer = await client.post(f"{base}/v1/infer", content=InferRequest(frames=frames).model_dump_json())
    results = InferResponse.model_validate(json.loads(answer.content)).results
    assert [r.frame_id for r in results] == ["f0", "f1", "f2"]
    assert all([d.label for d in r.detections] == ["no_helmet"] for r in results)
    assert service.heartbeat().max_batch == 4 and service.heartbeat().task_types == [TaskType.NO_HELMET]


def test_worker_onnx_service_rules_and_stored_alerts_for_labels_hog_cannot_produce(
        tmp_path: Path, stack_env: dict[str, str]) -> None:
    """worker → the ONNX service → rules → PostgreSQL, for no_helmet, smoking and object_left tasks: a model that
    sees, in every frame, a worker without a helmet, a cigarette and a suitcase nobody attends."""
    import asyncio
    import uuid

    import asyncpg

    from framewatch.clients.bus import ensure_topics
    from framewatch.ops.demo import PipelineRun
    from framewatch.ops.load import FrameLoad, free_port, namespaced_env
    from tests.conftest import SAMPLE_JPEG, write_config

    labels = ["no_helmet", "smoking", "suitcase"]
    seen = np.array([[[8, 8, 20, 40, 0.9, 0], [40, 10, 44, 14, 0.8, 1], [30, 44, 46, 60, 0.85, 2]]], np.float32)
    model = constant_model(tmp_path / "safety.onnx", {"output0": seen})
    (tmp_path / "safety.labels").write_text("\n".join(labels) + "\n")
    prefix = "x" + uuid.uuid4().hex[:6]
    kinds = {"h": "no_helmet", "s": "smoking", "o": "object_left"}
    config = "".join(f'[[frame_extractor.tasks]]\nid = "{prefix}{k}-000"\ntask_type = "{kind}"\nrtsp_url = "unused"\n'
                     f'cooldown_sec = 0\nstationary_sec = 1\n' for k, kind in kinds.items())
    port = free_port()
    run = PipelineRun(write_config(tmp_path / "fw.toml", config), namespaced_env(stack_env), tmp_path / "logs",
                      detectors=["detector", "--model", str(model), "--labels", str(tmp_path / "safety.labels"),
                                 "--task-types", ",".join(kinds.values()), "--max-batch", "4", "--port", str(port)])
    asyncio.run(ensure_topics(run.config))
    run.start()
    try:
        async def load_and_count() -> dict[str, int]:
            loads = [FrameLoad(run.config, 1, 2, prefix=f"{prefix}{k}", image=SAMPLE_JPEG, task_type=TaskType(kind))
                     for k, kind in kinds.items()]
            await asyncio.gather(*(load.run(duration_s=6) for load in loads))
            connection = await asyncpg.connect(run.config.database.dsn.get_secret_value())
            try:
                async with asyncio.timeout(60):
                    while True:
                        rows = await connection.fetch("SELECT task_type, count(*) AS n FROM alerts WHERE camera_id "
                                                      "LIKE $1 GROUP BY task_type", f"{prefix}%")
                        stored = {r["task_type"]: r["n"] for r in rows}
                        if set(stored) == set(kinds.values()):
                            return stored
                        await asyncio.sleep(1)
            finally:
                await connection.close()

        stored = asyncio.run(load_and_count())
    finally:
        run.stop()
    assert set(stored) == {"no_helmet", "smoking", "object_left"} and all(n >= 1 for n in stored.values())
