"""The `framewatch` command.

Exit status: 0 done; 1 the command ran and found something wrong (a service of the stack down, a camera failed);
2 bad usage or input (arguments, config, an unknown task: `BadInput`); 3 a peer it needs cannot be reached (Kafka,
PostgreSQL, the worker: `Unreachable`); 130 interrupted. Listings take `--json` (one JSON document on stdout)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from framewatch.errors import BadInput, FramewatchError, Unreachable
from framewatch.ops.table import text_table
from framewatch.schemas.config import Config, ConfigError, load_config, mask_url, masked
from framewatch.schemas.tasks import CameraTask

log = logging.getLogger("framewatch")


def _config(args: argparse.Namespace) -> Config:
    config, ignored = load_config(args.config)
    for note in ignored:
        log.warning("config %s: %s", args.config, note)
    return config


def listing(args: argparse.Namespace, records: list[dict[str, Any]], table: Callable[[], list[str]]) -> None:
    """A listing on stdout: `records` as JSON with --json, else the table's lines."""
    print(json.dumps(records, ensure_ascii=False, default=str) if args.json else "\n".join(table()))


def cmd_stack(args: argparse.Namespace) -> int:
    from framewatch.stack import LocalStack

    stack = LocalStack(brokers=args.brokers)
    if args.action == "up":
        stack.up()
    elif args.action == "down":
        stack.down()
    elif args.action == "status":
        statuses = stack.status()
        listing(args, [asdict(s) for s in statuses], lambda: text_table(
            ["service", "address", "pid", "health"],
            [[s.name, s.address, s.pid or "-", "up" if s.healthy else "DOWN"] for s in statuses], right={2}))
        return 0 if all(s.healthy for s in statuses) else 1
    else:
        for name, value in stack.env().items():
            print(f"export {name}={value}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    config, ignored = load_config(args.file)
    for note in ignored:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(masked(config), indent=2, ensure_ascii=False))
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from framewatch.clients.database import AlertStore

    async def run() -> None:
        store = AlertStore.of(_config(args))
        await store.connect()
        await store.close()

    asyncio.run(run())
    print("database schema is current")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import uvloop
    from prometheus_client import start_http_server

    from framewatch.process import settle_heap
    from framewatch.streams.extractor import run_extractor, serve_extractor

    config = _config(args)
    if not args.once:
        import mode.loop

        mode.loop.use("uvloop")
        serve_extractor(config)  # with /metrics, /healthz and /readyz
    start_http_server(config.framewatch.extractor_metrics_port, addr=config.framewatch.bind_host)
    settle_heap()
    report = uvloop.run(run_extractor(config))
    print(json.dumps({"frames_emitted": report.emitted, "cameras": [c.__dict__ for c in report.cameras]},
                     ensure_ascii=False))
    return 1 if report.failed else 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from framewatch.ops import tasks

    config = _config(args)
    if args.action == "list":
        current = asyncio.run(tasks.current_tasks(config))
        listing(args, tasks.tasks_json(current), lambda: tasks.tasks_table(current))
        return 0
    changes = dict(tasks.parse_setting(s) for s in args.set)
    if args.action in CANDIDATE_ACTIONS:
        return cmd_candidate(args, config, changes)
    if args.action == "add":
        for key, value in (("task_type", args.type), ("rtsp_url", args.url), ("interval_ms", args.interval_ms)):
            if value is not None:
                changes[key] = value
        task = asyncio.run(tasks.add_task(config, {"id": args.task_id, **changes}))
    elif args.action == "remove":
        asyncio.run(tasks.remove_task(config, args.task_id))
        print(f"task {args.task_id} removed")
        return 0
    else:
        if args.action in ("disable", "enable"):
            changes["enabled"] = args.action == "enable"
        task = asyncio.run(tasks.update_task(config, args.task_id, changes))
    print(json.dumps(shown(task), ensure_ascii=False))
    return 0


def shown(task: CameraTask) -> dict[str, Any]:
    """A task as the commands print it, the camera URL's credentials masked."""
    return {**task.model_dump(mode="json"), "rtsp_url": mask_url(task.rtsp_url)}


CANDIDATE_ACTIONS = ("try", "promote", "drop", "diff")


def cmd_candidate(args: argparse.Namespace, config: Config, changes: dict[str, Any]) -> int:
    """`tasks try | promote | drop | diff`: candidate rule settings beside a task's live ones."""
    from framewatch.ops import candidates

    by = candidates.operator(args.by)
    if args.action == "diff":
        report = asyncio.run(candidates.diff(config, args.task_id, args.tolerance))
        print(json.dumps(report.as_dict(), ensure_ascii=False) if args.json else "\n".join(report.table()))
        return 0
    if args.action == "promote":
        task = asyncio.run(candidates.promote(config, args.task_id, by))
        print(json.dumps({"promoted": args.task_id, "by": by, "task": shown(task)}, ensure_ascii=False))
        return 0
    tried = asyncio.run(candidates.try_candidate(config, args.task_id, changes, by) if args.action == "try"
                        else candidates.drop(config, args.task_id, by))
    print(json.dumps({"tried" if args.action == "try" else "dropped": args.task_id, "by": by,
                      "since": tried.since, "changes": tried.changes}, ensure_ascii=False))
    return 0


def cmd_cameras(args: argparse.Namespace) -> int:
    from framewatch.ops.tasks import camera_statuses, cameras_table

    statuses = asyncio.run(camera_statuses(_config(args)))
    listing(args, [s.model_dump(mode="json") for s in statuses], lambda: cameras_table(statuses))
    return 0


def cmd_detector(args: argparse.Namespace) -> int:
    from framewatch.clients.bus import ensure_topics
    from framewatch.detector.service import DetectorSettings, serve
    from framewatch.schemas.tasks import parse_task_type

    config = _config(args)
    asyncio.run(ensure_topics(config))
    kind = "hog" if args.model is None else Path(args.model).stem
    service_id = args.service_id or f"{kind}-{socket.gethostname()}-{args.port}"
    labels = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()] \
        if args.labels else None
    task_types = [parse_task_type(name) for name in args.task_types.split(",")] if args.task_types else None
    serve(DetectorSettings(service_id=service_id, host=config.framewatch.bind_host, port=args.port,
                           capacity=args.capacity or os.cpu_count() or 1, advertise_url=args.advertise_url,
                           upscale=args.upscale, model=Path(args.model) if args.model else None, labels=labels,
                           max_batch=args.max_batch, threads=args.threads, **({"task_types": task_types} if task_types else {})), config)
    return 0


def cmd_fake_detector(args: argparse.Namespace) -> int:
    import uvloop

    from framewatch.clients.bus import ensure_topics
    from framewatch.detector.misbehaving import (
        Behaviour,
        Fault,
        MisbehavingService,
        run_fleet,
    )

    config = None if args.no_announce else _config(args)
    if config is not None:
        asyncio.run(ensure_topics(config))
    behaviour = Behaviour(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, batch_extra_ms=args.batch_extra_ms,
                          fault=Fault(args.fault), fault_rate=args.fault_rate, people=args.people)
    fleet = [MisbehavingService(f"{args.id_prefix}-{i}", args.port + i, args.capacity, args.max_batch, behaviour)
             for i in range(args.instances)]
    log.info("%d misbehaving services on ports %d-%d", len(fleet), args.port, args.port + len(fleet) - 1)
    uvloop.run(run_fleet(fleet, config))
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    url = args.worker.rstrip("/") + "/api/services"
    token = _config(args).framewatch.api_token.get_secret_value()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            services = json.loads(answer.read())["services"]
    except urllib.error.HTTPError as error:
        raise BadInput(f"the worker at {url} answered {error.code}: {error.reason}"
                       + (" (set FRAMEWATCH_API_TOKEN or the config's api_token)" if error.code == 401 else "")) from None
    except OSError as error:
        raise Unreachable(f"cannot reach the worker at {url}: {error}") from None
    rows = [[s["service_id"], "healthy" if s["healthy"] else ("alive" if s["alive"] else "gone"), s["breaker"],
             s["in_flight"], s["capacity"], s["usable"], s["max_batch"],
             "-" if s["latency_ms"] is None else f"{s['latency_ms']:.1f}", s["requests"], s["faults"], s["endpoint"]]
            for s in services]
    listing(args, services, lambda: text_table(["service", "health", "breaker", "in flight", "cap", "mine", "batch",
                                                "latency ms", "requests", "faults", "endpoint"], rows,
                                               right=range(3, 10)))
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    import mode.loop
    from mode import Service

    from framewatch.bridges.mqtt import MqttBridge
    from framewatch.bridges.webhook import WebhookBridge
    from framewatch.clients.bus import ensure_topics
    from framewatch.health import Readiness
    from framewatch.process import serve

    if args.alert_off_delay < 1:
        raise BadInput("--alert-off-delay: at least 1 second")
    config = _config(args)
    asyncio.run(ensure_topics(config))

    async def build() -> tuple[Service, Readiness]:
        if args.kind == "mqtt":
            host, _, port = args.target.rpartition(":")
            mqtt = MqttBridge(config, host or "127.0.0.1", int(port or 1883), args.prefix,
                              os.environ.get("FRAMEWATCH_MQTT_USERNAME", ""),
                              os.environ.get("FRAMEWATCH_MQTT_PASSWORD", ""),
                              discovery_prefix=args.discovery_prefix if args.discovery else None,
                              alert_off_delay_s=args.alert_off_delay)
            return mqtt, mqtt.readiness
        webhook = WebhookBridge(config, args.target, os.environ.get("FRAMEWATCH_WEBHOOK_SECRET", ""), args.clips)
        return webhook, webhook.readiness

    mode.loop.use("uvloop")
    serve(build, config.framewatch.bind_host, args.port)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import mode.loop

    from framewatch.agents.app import Worker
    from framewatch.agents.pipeline import build_worker
    from framewatch.clients.bus import ensure_topics

    config = _config(args)
    asyncio.run(ensure_topics(config))
    mode.loop.use("uvloop")
    app, *_ = build_worker(config)
    Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from framewatch.ops.topics import list_topics, tail

    config = _config(args)
    if args.action == "list":
        infos = asyncio.run(list_topics(config))
        rows = [[i.name, i.partitions, i.end_offset, ", ".join(f"{g}={n}" for g, n in sorted(i.lag.items())) or "-"]
                for i in infos]
        listing(args, [asdict(i) for i in infos],
                lambda: text_table(["topic", "parts", "end offset", "consumer lag"], rows, right={1, 2}))
    else:
        for record in asyncio.run(tail(config, args.topic, args.n)):
            print(json.dumps(record, ensure_ascii=False))
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from framewatch.schemas.events import json_schemas
    from framewatch.schemas.feed import feed_schemas

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    schemas = {**json_schemas(), **feed_schemas()}
    for name, schema in schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(schemas)} schemas to {out} (FeedMessage: the alert feed on mq_topic, an AlertMessage or a "
          "ClipMessage)")
    return 0


def _moment_ms(text: str | None) -> int | None:
    """ms since the epoch, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{text!r}: expected ms since the epoch or an ISO 8601 time") from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def cmd_replay(args: argparse.Namespace) -> int:
    from framewatch.ops import replay, replay_clips, scoring
    from framewatch.ops.tasks import parse_setting
    from framewatch.stack import StackHome

    if (args.video is None) == (not args.from_topic):
        raise ConfigError("replay: give a VIDEO file, or --from-topic for the detections stored on fw.detections")
    if args.clips and args.video is None:
        raise ConfigError("replay --clips cuts clips from a VIDEO; the clips of stored alerts are at "
                          "/api/alerts/{id}/clip")
    config = _config(args)
    task = replay.pick_task(config, args.task, dict(parse_setting(s) for s in args.settings))
    truth = scoring.load_truth(Path(args.truth)) if args.truth else None
    cache = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else StackHome.default().cache / "replay"
    try:
        result = asyncio.run(replay.replay(config, task, Path(args.video) if args.video else None, args.detector,
                                           cache, _moment_ms(args.since), _moment_ms(args.until)))
    except replay.ReplayError as error:
        raise ConfigError(str(error)) from None
    scores = scoring.score(truth, result.scored()) if truth is not None else None
    print(replay.report(result, scores, args.json))
    if args.clips:
        print(replay_clips.report(replay_clips.write_clips(Path(args.video), task, result.alerts, Path(args.clips)),
                                  Path(args.clips)), file=sys.stderr)
    return 0


def cmd_truth(args: argparse.Namespace) -> int:
    from framewatch.ops import replay, truth

    config = _config(args)
    task = replay.pick_task(config, args.task, {})
    try:
        exported = asyncio.run(truth.export_truth(config, task, _moment_ms(args.since), _moment_ms(args.until),
                                                  args.tolerance))
    except replay.ReplayError as error:
        raise ConfigError(str(error)) from None
    print(f"truth export: {len(exported.events)} events of {len(exported.rules)} rules; {exported.note}",
          file=sys.stderr)
    print(truth.truth_json(exported))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from framewatch.ops.demo import DEMO_CONFIG, run_demo

    return run_demo(keep_stack=not args.stop_stack, keep_running=args.keep, config_path=args.config or DEMO_CONFIG)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="framewatch", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("-v", "--verbose", action="store_true")
    root.add_argument("--version", action="version", version=f"framewatch {version('framewatch')}")
    sub = root.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", default=os.environ.get("FRAMEWATCH_CONFIG"),
                       help="config.toml (default: $FRAMEWATCH_CONFIG, else built-in defaults)")
        return p

    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
        return p

    p = with_json(sub.add_parser("stack", help="the local Kafka, MinIO and PostgreSQL"))
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--brokers", type=int, choices=[1, 3], default=1,
                   help="3: a three-node KRaft cluster (ports 19192-19197) instead of the single broker")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("config", help="validate a config file")
    p.add_argument("action", choices=["check"])
    p.add_argument("file")
    p.set_defaults(func=cmd_config_check)

    p = with_config(sub.add_parser("db", help="database schema"))
    p.add_argument("action", choices=["migrate"])
    p.set_defaults(func=cmd_db_migrate)

    p = with_config(sub.add_parser("extract", help="run the cameras of the fw.tasks partitions this extractor owns"))
    p.add_argument("--once", action="store_true",
                   help="run the config's own tasks to the end of their sources instead, without fw.tasks")
    p.set_defaults(func=cmd_extract)

    p = with_json(with_config(sub.add_parser("tasks", help="camera tasks on fw.tasks, changed at run time")))
    p.add_argument("action", choices=["list", "add", "update", "disable", "enable", "remove", *CANDIDATE_ACTIONS])
    p.add_argument("task_id", nargs="?")
    p.add_argument("--type", help="add: the task type (区域入侵, area_intrusion, ...)")
    p.add_argument("--url", help="add: the camera (rtsp://, rtmp://, http(s)://, or a file)")
    p.add_argument("--interval-ms", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any task setting, the value in TOML (region=[[0,0],[1,0],[1,1]], change_gate=true); "
                        "try: rule settings only")
    p.add_argument("--by", help="try, promote, drop: who does it, recorded on fw.tasks (default: the login name)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="diff: seconds apart a candidate's alert may be from a live one and match it (1)")
    p.set_defaults(func=cmd_tasks)

    p = with_json(with_config(sub.add_parser("cameras",
                                             help="every camera: state, rates, last frame, reconnects, last error")))
    p.set_defaults(func=cmd_cameras)

    p = with_config(sub.add_parser("detector", help="run the reference HOG algorithm service"))
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--service-id")
    p.add_argument("--capacity", type=int, help="concurrent frames (default: CPU cores)")
    p.add_argument("--advertise-url", help="the URL workers reach this service at (default: http://HOST:PORT)")
    p.add_argument("--upscale", type=float, default=1.0,
                   help="enlarge frames first, to find people under 128 pixels tall (costs about upscale² the time)")
    p.add_argument("--model", help="an ONNX detection model instead of HOG (yolo, end-to-end nms or boxes/scores "
                                   "outputs: see README, Bring your own model)")
    p.add_argument("--labels", help="--model: its class names, one per line, in order (default: COCO's 80)")
    p.add_argument("--max-batch", type=int, default=16, help="--model: frames per request and per model run")
    p.add_argument("--threads", type=int, help="--model: ONNX Runtime threads per model run (default: the CPU "
                   "cores shared by --capacity runs at once)")
    p.add_argument("--task-types", help="the task types it serves, comma-separated (default: the people tasks)")
    p.set_defaults(func=cmd_detector)

    p = with_config(sub.add_parser("fake-detector", help="run misbehaving algorithm services (tests, benchmarks)"))
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--port", type=int, default=18600, help="the first instance's port; the others follow")
    p.add_argument("--id-prefix", default="fake")
    p.add_argument("--capacity", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=140.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--batch-extra-ms", type=float, default=0.0, help="added per extra frame in a batch")
    p.add_argument("--fault", default="none", choices=["none", "resource_exhausted", "timeout", "garbage",
                                                       "slow_body", "reset", "http_500"])
    p.add_argument("--fault-rate", type=float, default=1.0)
    p.add_argument("--people", type=int, default=0, help="person detections in every answer, new people in every frame")
    p.add_argument("--no-announce", action="store_true", help="do not announce on fw.services")
    p.set_defaults(func=cmd_fake_detector)

    p = with_json(with_config(sub.add_parser("services",
                                             help="the algorithm services a worker routes to, with health and load")))
    p.add_argument("--worker", default="http://127.0.0.1:6066", help="the worker's web address")
    p.set_defaults(func=cmd_services)

    p = with_config(sub.add_parser("bridge", help="the alert feed to MQTT (Home Assistant style) or to a webhook"))
    p.add_argument("kind", choices=["mqtt", "webhook"])
    p.add_argument("target", help="mqtt: the broker, HOST:PORT (credentials: FRAMEWATCH_MQTT_USERNAME and "
                                  "_PASSWORD); webhook: the URL to POST to (FRAMEWATCH_WEBHOOK_SECRET signs the bodies)")
    p.add_argument("--prefix", default="framewatch", help="mqtt: the topic prefix")
    p.add_argument("--discovery", action="store_true", help="mqtt: Home Assistant MQTT discovery, retained: a device "
                                                            "per task of fw.tasks (an alert binary sensor, the latest "
                                                            "alert image), removed with its task")
    p.add_argument("--discovery-prefix", default="homeassistant", help="mqtt: Home Assistant's discovery prefix")
    p.add_argument("--alert-off-delay", type=int, default=30, metavar="SECONDS",
                   help="mqtt --discovery: the alert sensor turns off this long after a camera's last alert")
    p.add_argument("--clips", action="store_true", help="webhook: POST the alerts' clip messages too (MQTT always "
                                                        "publishes them, on topics of their own)")
    p.add_argument("--port", type=int, default=9465, help="where /metrics, /healthz and /readyz answer")
    p.set_defaults(func=cmd_bridge)

    p = with_config(sub.add_parser("worker", help="run the Faust worker (inference, rules, sink, ...)"))
    p.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    p.set_defaults(func=cmd_worker)

    p = with_config(sub.add_parser("topics", help="inspect topics"))
    tsub = p.add_subparsers(dest="action", required=True)
    with_json(tsub.add_parser("list"))
    t = tsub.add_parser("tail")
    t.add_argument("topic")
    t.add_argument("-n", type=int, default=10)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("schemas", help="export the JSON Schema of every event record and of the alert feed")
    p.add_argument("action", choices=["export"])
    p.add_argument("dir")
    p.set_defaults(func=cmd_schemas)

    p = with_config(sub.add_parser("replay", help="a video (or stored detections) through the detector and a task's "
                                   "rule, every frame in order; the alerts, scored against a truth file"))
    p.add_argument("video", nargs="?", help="the recorded video (any file PyAV reads)")
    p.add_argument("--task", help="the config's task to evaluate (needed when it has several)")
    p.add_argument("--detector", action="append", default=[], metavar="URL",
                   help="an algorithm service's endpoint (repeatable; default: the config's [[ai_analysis.services]])")
    p.add_argument("--settings", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a rule setting to try instead of the config's, the value in TOML; cached detections are reused")
    p.add_argument("--from-topic", action="store_true", help="the task's detections stored on fw.detections instead")
    p.add_argument("--since", help="--from-topic: the first capture time (ms since the epoch or ISO 8601)")
    p.add_argument("--until", help="--from-topic: the last capture time")
    p.add_argument("--truth", help="a ground-truth JSON file: print precision, recall and time error per rule")
    p.add_argument("--json", action="store_true", help="the alerts (and scores) as JSON")
    p.add_argument("--no-cache", action="store_true", help="ask the detector again even if this video was run before")
    p.add_argument("--cache-dir", help="where detections are cached (default: the stack's cache folder, replay/)")
    p.add_argument("--clips", metavar="DIR", help="write each alert's clip (the task's clip_pre_sec and clip_post_sec "
                   "around it, cut from VIDEO by stream copy) to DIR/<alert id>.mp4")
    p.set_defaults(func=cmd_replay)

    p = with_config(sub.add_parser("truth", help="the reviews of a span as a truth file for replay --from-topic"))
    p.add_argument("action", choices=["export"])
    p.add_argument("--task", help="the config's task whose reviews to export (needed when it has several)")
    p.add_argument("--since", help="the first capture time (ms since the epoch or ISO 8601): give replay the same")
    p.add_argument("--until", help="the last capture time: give replay the same")
    p.add_argument("--tolerance", type=float, default=1.0, metavar="SECONDS",
                   help="how far from an event a replayed alert may be and still find it")
    p.set_defaults(func=cmd_truth)

    p = sub.add_parser("demo", help="run the whole pipeline on the bundled sample clip")
    p.add_argument("--stop-stack", action="store_true", help="stop the local stack afterwards")
    p.add_argument("--keep", action="store_true", help="keep the worker and detector (and the dashboard) running "
                                                       "after the summary, until Ctrl-C, SIGTERM or SIGHUP")
    p.add_argument("-c", "--config", type=Path, help="tasks of your own instead of samples/demo.toml's")
    p.set_defaults(func=cmd_demo)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "tasks" and args.action != "list" and not args.task_id:
        parser().error(f"tasks {args.action} needs a task id")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    # a line per request, and a fetched frame's line holds its presigned URL: a read grant for whoever sees logs
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (BadInput, LookupError) as error:
        return _failed(error, 2)
    except Unreachable as error:
        return _failed(error, 3)
    except FramewatchError as error:
        return _failed(error, 1)
    except KeyboardInterrupt:
        return 130


def _failed(error: BaseException, status: int) -> int:
    print(f"framewatch: error: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
