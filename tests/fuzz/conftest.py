from tests.integration.conftest import prefix

__all__ = ["prefix"]
