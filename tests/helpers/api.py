"""The API keys the API tests use: two tenants."""

KEY = "test-key"
OTHER_KEY = "other-test-key"
