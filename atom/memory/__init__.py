"""The agent's memory: a vector store with CRUD by stable id (``atom.memory.store``), the embedders that feed it
(``atom.memory.embedder``) and its versioned snapshots (``atom.memory.persist``)."""
