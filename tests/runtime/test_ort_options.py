"""OrtOptions: the ONNX Runtime backend's load(..., **options), one frozen, checked value; OrtSession: a built session."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import runtime
from runtime.backends import Device
from runtime.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions, OrtSession


def test_option_names_are_the_fields_in_their_order():
    assert (
        OnnxRuntimeBackend.options
        == OrtOptions.names()
        == (
            "threads",
            "inter_op_threads",
            "graph_optimization_level",
            "execution_provider",
            "io_binding",
            "provider_options",
            "max_batch",
            "spinning",
            "preload",
            "batch_split",
        )
    )


def test_defaults_and_frozen():
    o = OrtOptions()
    assert (o.threads, o.graph_optimization_level, o.execution_provider, o.io_binding, o.preload, o.batch_split) == (
        None,
        "all",
        None,
        None,
        False,
        None,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threads = 2


@pytest.mark.parametrize(
    "options,message",
    [
        ({"threads": 0}, "option threads: expected a positive integer, got 0"),
        ({"inter_op_threads": 1.5}, "option inter_op_threads: expected a positive integer, got 1.5"),
        ({"max_batch": True}, "option max_batch: expected a positive integer, got True"),
        ({"spinning": 1}, "option spinning: expected True or False, got 1"),
        ({"io_binding": "yes"}, "option io_binding: expected True or False, got 'yes'"),
        ({"batch_split": 1}, "option batch_split: expected False or a batch size >= 2, got 1"),
        (
            {"graph_optimization_level": "max"},
            "option graph_optimization_level: expected one of ['disable', 'basic', 'extended', 'all'], got 'max'",
        ),
        (
            {"execution_provider": "npu"},
            "option execution_provider: expected one of ['cpu', 'cuda', 'tensorrt'], got 'npu'",
        ),
        (
            {"provider_options": [("a", 1)]},
            "option provider_options: expected a mapping of provider option names to values, got list [('a', 1)]",
        ),
        ({"thread": 2}, "backend 'onnxruntime': unknown option(s) ['thread']; it accepts ['threads', "),
    ],
)
def test_bad_values_name_the_option_the_expected_and_the_actual(options, message):
    with pytest.raises(runtime.BackendError) as e:
        OrtOptions.from_mapping(options)
    assert str(e.value).startswith(message)


def test_provider_follows_the_device_and_must_run_there():
    assert OrtOptions().provider(Device.parse("cpu")) == "cpu"
    assert OrtOptions().provider(Device.parse("cuda:1")) == "cuda"
    assert OrtOptions(execution_provider="tensorrt").provider(Device.parse("cuda")) == "tensorrt"
    with pytest.raises(runtime.BackendError, match=r"execution_provider='tensorrt' does not run on device 'cpu'"):
        OrtOptions(execution_provider="tensorrt").provider(Device.parse("cpu"))


def test_split_min_batch():
    defaults = {"decoder": 32}
    assert OrtOptions().split_min_batch(("encoder", "decoder"), defaults) == {"decoder": 32}
    assert OrtOptions(batch_split=4).split_min_batch(("encoder", "decoder"), defaults) == {"encoder": 4, "decoder": 4}
    assert OrtOptions(batch_split=False).split_min_batch(("decoder",), defaults) == {}


def test_provider_options_are_copied():
    mine = {"trt_engine_cache_enable": True}
    o = OrtOptions(provider_options=mine)
    mine["trt_fp16_enable"] = True
    assert o.provider_options == {"trt_engine_cache_enable": True}


def test_load_keyword_options_reach_the_backend_as_ort_options(bundle):
    with runtime.load(bundle, backend="onnxruntime", threads=2, spinning=False, batch_split=False, preload=True) as rt:
        assert rt.backend.ort_options == OrtOptions(threads=2, spinning=False, batch_split=False, preload=True)
        entry = rt.backend._sessions["decoder"]
        assert isinstance(entry, OrtSession) and entry.output_names == ["image"]
        assert entry.input_types == {"z": np.float32}
        assert entry.session.get_session_options().intra_op_num_threads == 2
        assert rt.decode(np.zeros((2, rt.latent_dim), np.float32)).shape[0] == 2
