"""`gpumon completion bash|zsh`: the shell completion script, made from the parser by shtab.

Every command and option is completed; ``--config`` completes file names. The agent's own
commands (``gpumon agent …``, ``gpumon claim …``) complete as words only.
"""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; one of {', '.join(SHELLS)}")
    text = shtab.complete(parser, shell=shell)
    return text if text.endswith("\n") else text + "\n"
