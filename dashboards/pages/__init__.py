"""The explorer's pages, one module each (ids prefixed by the page name); see :mod:`dashboards.pages.common`."""
