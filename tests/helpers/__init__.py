"""What tests share: paths, row files, fakes, references and real-service helpers. No test imports another test
module or a conftest; what two of them need lives here."""
