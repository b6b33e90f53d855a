"""The base layer: what every other layer may use and nothing in it imports from them.

`errors` (the errors people see), `cli` (what the command lines share), `files` (writing files whole), `sharding`
(the device mesh) and `multihost` (decisions every process takes together).
"""
