"""Fixtures of the MedVQA tests."""
import pytest

from medvtab.errors import MedvtabError
from medvtab.vqa import data as vqa_data


@pytest.fixture(scope="session")
def shared_vqa_data():
    """Skips, with the reason shown, where the shared MedVQA sets (../shared/vqa) are absent."""
    try:
        vqa_data.vqa_root()
        vqa_data.load_vqa("vqa-rad", "test")
    except MedvtabError as err:
        pytest.skip(f"shared MedVQA data not available ({err})")
