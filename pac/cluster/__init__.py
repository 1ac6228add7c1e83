"""Running a mesh on one machine: local processes (local_mesh), network namespaces (netns)."""
