"""The settings stage: the files the editor keeps. feeds.yaml is read with its line numbers into typed settings
(config; yamlfile reads the YAML, sections turns a mapping into a dataclass, patterns checks the subject and
URL patterns filled in later, folders keeps the published folder apart from drafts, database and list), every
problem a ConfigError naming file, line and field; subscribers reads and checks the subscriber CSV files and
the address rules.

It may import the core modules only: never the store, a backend or any later stage. A backend's section of
feeds.yaml is read by the backend, passed in by the caller (`load_config(path, backends=...)`).
"""
