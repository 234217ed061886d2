"""What the HTTP API keeps besides jobs: uploaded files and OpenAI batches, each owned by one API key."""
