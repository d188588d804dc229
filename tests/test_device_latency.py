"""Latency measured elsewhere: adb_latency against a stand-in adb that prints what LiteRT's
benchmark_model prints (no phone is attached here), and command_latency end to end through
prune_to_budget and the CLI's --measure-command."""

import os
import stat
import sys

import pytest

from tfsynapse.budget import device_latency

_BENCHMARK_OUTPUT = """\
INFO: Num runs: [50]
INFO: Inference timings in us: Init: 20571, First inference: 9126, Warmup (avg): 8511.2, \
Inference (avg): 8250.5
INFO: Memory footprint delta from the start of the tool (MB): init=4.1 overall=9.9
"""


def _fake_adb(tmp_path, fail=None):
    """An ``adb`` on PATH that logs its arguments and answers like a phone would."""
    log = tmp_path / "adb.log"
    script = tmp_path / "adb"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"fail = {fail!r}\n"
        "if fail:\n"
        "    sys.stderr.write(fail)\n"
        "    sys.exit(1)\n"
        f"if sys.argv[1] == 'shell':\n"
        f"    sys.stdout.write({_BENCHMARK_OUTPUT!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), log


def test_adb_latency_pushes_benchmarks_and_reads_the_average(tmp_path):
    adb, log = _fake_adb(tmp_path)
    measure = device_latency.adb_latency(adb=adb, runs=20)
    assert measure(b"tflite bytes", 2) == pytest.approx(8.2505)
    push, *shells = log.read_text().splitlines()
    assert push.startswith("push ") and push.endswith(device_latency.DEVICE_FILE)
    assert len(shells) == 3  # the median of three rounds: benchmark_model prints no median
    for shell in shells:
        assert shell.startswith("shell /data/local/tmp/benchmark_model")
        assert "--num_threads=2" in shell and "--num_runs=20" in shell
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        device_latency.adb_latency(adb=adb, rounds=0)
    (tmp_path / "failing").mkdir()
    failing, _ = _fake_adb(tmp_path / "failing", fail="error: no devices/emulators found")
    with pytest.raises(RuntimeError, match="no devices/emulators found") as failed:
        device_latency.adb_latency(adb=failing)(b"x", 1)
    # the command line prints an error's first line: the device's own words must be on it
    assert "no devices/emulators found" in str(failed.value).splitlines()[0]
    assert "push LiteRT's benchmark_model" not in str(failed.value)  # adb ran: no install hint
    with pytest.raises(RuntimeError, match="was not found: install the Android platform"):
        device_latency.adb_latency(adb=str(tmp_path / "no-adb"))(b"x", 1)


def test_a_measure_command_reads_milliseconds_from_its_last_line(tmp_path):
    size = f"{sys.executable} -c \"import os, sys; print('timing'); " \
           "print(os.path.getsize(sys.argv[1]) / 1000 * int(sys.argv[2]))\" {tflite} {threads}"
    assert device_latency.command_latency(size)(b"x" * 500, 3) == pytest.approx(1.5)
    with pytest.raises(RuntimeError, match="must print the latency in ms"):
        device_latency.command_latency(f"{sys.executable} -c \"print('fast')\" {{tflite}}")(
            b"x", 1)
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\)"):
        device_latency.command_latency(
            f"{sys.executable} -c \"import sys; sys.exit(3)\" {{tflite}}")(b"x", 1)
    with pytest.raises(ValueError, match="must contain {tflite}"):
        device_latency.command_latency("echo 1")
    with pytest.raises(RuntimeError, match=r"exit 127\): 'bm: not found'. The program was "
                                           r"not found or cannot run \(exit 126/127\): for "
                                           r"--adb, push LiteRT's benchmark"):
        device_latency.command_latency(f"{sys.executable} -c \"import sys; sys.stderr.write("
                                       "'bm: not found'); sys.exit(127)\" {tflite}")(b"x", 1)
    with pytest.raises(RuntimeError, match="its last line was 'fast'"):
        device_latency.command_latency(f"{sys.executable} -c \"print('fast')\" {{tflite}}")(
            b"x", 1)
    with pytest.raises(ValueError, match="2 threads were asked for, but the measure command"):
        device_latency.command_latency("echo 1 {tflite}")(b"x", 2)


def test_the_command_line_times_candidates_with_a_measure_command(tmp_path, capsys):
    import tflite_export
    import tfsynapse
    from conftest import randomize_bn, small_cnn
    from tfsynapse.cli import main  # noqa: PLC0415

    model = randomize_bn(small_cnn(input_shape=(16, 16, 3), backend="tf_keras"))
    path, out = str(tmp_path / "model.keras"), str(tmp_path / "pruned.keras")
    model.save(path)
    dense = len(tflite_export.convert(model)) / 1000
    command = f"{sys.executable} -c \"import os, sys; print(os.path.getsize(sys.argv[1]) / " \
              "1000)\" {tflite}"
    assert main(["prune", path, "--target-latency", f"{0.8 * dense:.4f}ms", "--round-to", "1",
                 "--threads", "2", "--measure-command", command, "-o", out]) == 1
    assert "--threads 2 is not passed on" in capsys.readouterr().err
    assert main(["prune", path, "--target-latency", f"{0.8 * dense:.4f}ms", "--round-to", "1",
                 "--measure-command", command, "-o", out]) == 0
    text = capsys.readouterr().out
    assert "prune_to_budget: dense" in text, text
    small = tfsynapse.shrink(tfsynapse.backends.backend_of(model).load_model(out))
    assert len(tflite_export.convert(small)) / 1000 <= 0.8 * dense
    assert os.path.exists(out)
