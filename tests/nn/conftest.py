"""Fixtures shared by the tests of tensortrain_nn."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test with one torch thread (bit-exact comparisons between runs need the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory):
    """A tiny LLaMA checkpoint folder (see ``_llm_bases``), written once per session."""
    pytest.importorskip("transformers")
    from _llm_bases import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
