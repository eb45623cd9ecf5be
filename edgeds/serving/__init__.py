"""Front ends that are not interactive: the terminal printer of `edgeds run`, `edgeds batch`,
`edgeds serve`, the OpenAI wire format, and the client for remote OpenAI-compatible servers."""
