"""Apache Kafka in KRaft mode, its jars resolved from Maven Central: one node (the default local stack), or a node
of a three-node cluster (`framewatch stack up --brokers 3`: each node broker and controller, every internal topic
replicated three times, writes acknowledged by two)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from framewatch.stack.base import (
    LocalService,
    StackError,
    StackHome,
    require_tool,
    run_with_progress,
)

KAFKA_VERSION = "4.1.1"
CLUSTER_ID = "ZnJhbWV3YXRjaC1sb2NhbA"

POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>framewatch.stack</groupId><artifactId>kafka-server</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
      <version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


PROXIED_ADVERTISED_PORT = 19095  # Toxiproxy's listening port for it (stack/toxiproxy.py)
CLUSTER_PORT = 19192  # node i of the cluster: PLAINTEXT on 19192 + 2(i-1), its controller on the next port


class Kafka(LocalService):
    name = "kafka"
    port = 19092
    controller_port = 19093
    proxied_port = 19094  # the listener Toxiproxy forwards to

    def __init__(self, home: StackHome, node: int = 1, nodes: int = 1) -> None:
        self.node = node
        self.nodes = nodes
        if nodes > 1:
            self.name = f"kafka-{node}"
            self.port = CLUSTER_PORT + 2 * (node - 1)
            self.controller_port = self.port + 1
        super().__init__(home)

    def _voters(self) -> str:
        if self.nodes == 1:
            return f"1@{self.host}:{self.controller_port}"
        return ",".join(f"{i}@{self.host}:{CLUSTER_PORT + 2 * (i - 1) + 1}" for i in range(1, self.nodes + 1))

    @property
    def dist(self) -> Path:
        return self.home.cache / f"kafka-{KAFKA_VERSION}"

    def install(self) -> None:
        require_tool("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre-headless)")
        libs = self.dist / "libs"
        if (self.dist / ".complete").exists():
            return
        mvn = require_tool("mvn", "install Maven to resolve Kafka's jars (Debian: apt-get install maven)")
        self.dist.mkdir(parents=True, exist_ok=True)
        (self.dist / "pom.xml").write_text(POM.format(version=KAFKA_VERSION))
        run_with_progress([mvn, "-B", "-ntp", "-f", str(self.dist / "pom.xml"), "dependency:copy-dependencies",
                           f"-DoutputDirectory={libs}", "-DincludeScope=runtime"],
                          f"resolving Kafka {KAFKA_VERSION} from Maven Central")
        (self.dist / ".complete").touch()

    def _java(self, main: str, *args: str) -> list[str]:
        heap = "-Xmx768m" if self.nodes == 1 else "-Xmx512m"
        return ["java", "-Xms256m", heap, f"-Dlog4j2.configurationFile={self.data / 'log4j2.properties'}",
                "-cp", f"{self.dist / 'libs'}/*", main, *args]

    def prepare(self) -> None:
        props = self.data / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node}",
            f"controller.quorum.voters={self._voters()}",
            *self._listeners(),
            "controller.listener.names=CONTROLLER",
            f"log.dirs={self.data / 'logs'}",
            "auto.create.topics.enable=false",
            f"offsets.topic.replication.factor={self.replicas}",
            "offsets.topic.num.partitions=8",
            f"transaction.state.log.replication.factor={self.replicas}",
            f"transaction.state.log.min.isr={self.min_insync}",
            f"default.replication.factor={self.replicas}",
            f"min.insync.replicas={self.min_insync}",
            "group.initial.rebalance.delay.ms=0",
            "num.partitions=4",
            "",
        ]))
        (self.data / "log4j2.properties").write_text(LOG4J2)
        if (self.data / "logs" / "meta.properties").exists():
            return
        result = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", CLUSTER_ID, "-c", str(props)),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stderr or result.stdout}")

    def _listeners(self) -> list[str]:
        """PLAINTEXT for everyone; the single broker also has PROXIED, reached through Toxiproxy (the fault tests):
        it advertises the proxy's address, so a client that bootstrapped through the proxy stays behind it."""
        listeners = [f"PLAINTEXT://{self.host}:{self.port}", f"CONTROLLER://{self.host}:{self.controller_port}"]
        advertised = [f"PLAINTEXT://{self.host}:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.nodes == 1:
            listeners.append(f"PROXIED://{self.host}:{self.proxied_port}")
            advertised.append(f"PROXIED://{self.host}:{PROXIED_ADVERTISED_PORT}")
            protocols.append("PROXIED:PLAINTEXT")
        return [f"listeners={','.join(listeners)}", f"advertised.listeners={','.join(advertised)}",
                f"listener.security.protocol.map={','.join(protocols)}", "inter.broker.listener.name=PLAINTEXT"]

    @property
    def replicas(self) -> int:
        return min(self.nodes, 3)

    @property
    def min_insync(self) -> int:
        return max(1, self.replicas - 1)

    def command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.data / "server.properties"))

    def healthy(self) -> bool:
        return super().healthy() and asyncio.run(self._answers_metadata())

    async def _answers_metadata(self) -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        finally:
            await admin.close()

    def env(self) -> dict[str, str]:
        return {"FRAMEWATCH_KAFKA_BOOTSTRAP": self.address}
