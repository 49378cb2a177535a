"""KafkaConfig's replication settings: what the topics are created with, and the combinations
that could never acknowledge a write are refused at start-up rather than at the first miss."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from embark.queue.kafka import KafkaConfig, _topic_config


def test_min_insync_replicas_becomes_the_topics_config() -> None:
    config = KafkaConfig(replication_factor=3, min_insync_replicas=2)
    assert _topic_config(config) == {"min.insync.replicas": "2"}


def test_unset_min_insync_replicas_leaves_the_brokers_default() -> None:
    assert _topic_config(KafkaConfig()) == {}


def test_min_insync_above_replication_is_refused() -> None:
    with pytest.raises(ValidationError, match="exceeds replication_factor"):
        KafkaConfig(replication_factor=2, min_insync_replicas=3)


def test_min_insync_from_the_environment_settings() -> None:
    from embark.settings import EmbarkSettings

    settings = EmbarkSettings(
        queue={"backend": "kafka", "kafka": {"replication_factor": 3, "min_insync_replicas": 2}}
    )
    assert settings.queue.kafka.min_insync_replicas == 2
