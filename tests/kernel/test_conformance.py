"""The ``jupyter_kernel_test`` conformance suite against the Rexec kernel on a local stack."""

from __future__ import annotations

from collections.abc import Iterator

import jupyter_kernel_test
import pytest

from tests.kernel.stack import start_kernel, start_stack, stop_kernel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class TestRexecKernelConformance(jupyter_kernel_test.KernelTests):
    # code_page_something: the worker's shell has no pager payload; `obj?` prints instead.
    kernel_name = "rexec"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    code_stderr = "import sys; print('test', file=sys.stderr)"
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_generate_error = "raise ValueError('remote')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>x</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    _stack: Iterator[object]

    @classmethod
    def setUpClass(cls) -> None:
        cls._stack = start_stack()
        stack = next(cls._stack)  # type: ignore[call-overload]
        cls.km, cls.kc = start_kernel(stack)  # type: ignore[arg-type]

    @classmethod
    def tearDownClass(cls) -> None:
        stop_kernel(cls.km, cls.kc)
        for _ in cls._stack:
            pass
