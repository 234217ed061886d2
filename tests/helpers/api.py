"""The API key the API tests use."""

KEY = "test-key"
