"""Settings from the environment: typed, validated, naming the variable at fault."""

from __future__ import annotations

import pytest

from worker.settings import Settings, SettingsError


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.model_name == "typeform/distilbert-base-uncased-mnli"
    assert settings.max_concurrency == 512


def test_variables_are_read_and_converted():
    settings = Settings.from_env(
        {"MODEL_NAME": "synthetic:tiny", "MAX_BATCH_TOKENS": "4096", "MAX_WAIT_MS": "0.5",
         "MAX_HEADLINES_PER_JOB": "7", "DEVICE": ""}
    )
    assert settings.model_name == "synthetic:tiny"
    assert settings.max_batch_tokens == 4096
    assert settings.max_wait_ms == 0.5
    assert settings.limits.max_headlines_per_job == 7
    assert settings.device is None  # an empty variable counts as unset


def test_overrides_win_over_the_environment():
    assert Settings.from_env({"MODEL_NAME": "a"}, model_name="b").model_name == "b"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MAX_BATCH_TOKENS": "lots"}, "MAX_BATCH_TOKENS: expected `int | null`, got `str`"),
        ({"MAX_CONCURRENCY": "0"}, "MAX_CONCURRENCY: must be at least 1"),
        ({"MAX_WAIT_MS": "-1"}, "MAX_WAIT_MS: must not be negative"),
        ({"PREMISE_CACHE_SIZE": "-1"}, "PREMISE_CACHE_SIZE: must not be negative"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL: expected DEBUG"),
        ({"MAX_TEXT_CHARS": "x"}, "MAX_TEXT_CHARS: expected `int`, got `str`"),
    ],
)
def test_a_bad_value_names_its_variable(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value)


def test_batch_budgets_default_by_device_and_can_be_set():
    settings = Settings.from_env({})
    gpu, cpu = settings.batch_policy(on_gpu=True), settings.batch_policy(on_gpu=False)
    assert gpu.max_batch_tokens > cpu.max_batch_tokens and gpu.max_batch_items > cpu.max_batch_items
    pinned = Settings.from_env({"MAX_BATCH_PAIRS": "48"}).batch_policy(on_gpu=True)
    assert pinned.max_batch_items == 48


def test_merging_identical_pairs_is_on_unless_turned_off():
    assert Settings.from_env({}).batch_policy(on_gpu=True).merge_identical
    assert not Settings.from_env({"MERGE_IDENTICAL_PAIRS": "false"}).batch_policy(on_gpu=True).merge_identical
    with pytest.raises(SettingsError, match="MERGE_IDENTICAL_PAIRS: expected `bool`"):
        Settings.from_env({"MERGE_IDENTICAL_PAIRS": "sometimes"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JOB_TTL_S": "0"}, "JOB_TTL_S: must be positive"),
        ({"KEEP_ALIVE_S": "0"}, "KEEP_ALIVE_S: must be positive"),
        ({"MAX_FINISHED_JOBS": "0"}, "MAX_FINISHED_JOBS: must be at least 1"),
        ({"MAX_BODY_BYTES": "-1"}, "MAX_BODY_BYTES: must be at least 1"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT: must be a TCP port"),
        ({"API_KEY": "   "}, "API_KEY: must not be blank"),
    ],
)
def test_front_end_settings_are_checked(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_the_api_key_never_shows_in_the_settings_repr():
    settings = Settings.from_env({"API_KEY": "s3cret-key", "METRICS_PORT": "9100"})
    assert settings.api_key == "s3cret-key" and settings.metrics_port == 9100
    assert "s3cret-key" not in repr(settings) and "s3cret-key" not in str(settings)
