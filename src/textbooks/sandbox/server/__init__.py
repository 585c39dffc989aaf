"""The sandbox's server side: standard library only, the one folder mounted into a program's new root
(its modules import each other as top-level modules there)."""
