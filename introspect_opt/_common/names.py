"""The names the introspection state goes by, in objects, files and checkpoints (both worlds)."""

# The optimizer attribute, checkpoint dependency and file group holding the state.
STATE_ATTRIBUTE = "_introspection_state"
# The state's checkpoint child that saves the manifest.
MANIFEST_CHILD = "_manifest"
# The manifest's entry in the state's file group.
MANIFEST_KEY = "manifest"
# The ``tf.Module`` name of the state object.
STATE_MODULE_NAME = "applied_learning_rate_state"

# The core entries: the rate the last update applied, and the update count it belongs to.
RATE_KEY = "applied_learning_rate"
COUNT_KEY = "update_count"
CORE_KEYS = (RATE_KEY, COUNT_KEY)
# The update count while no update has written the cache: the rate is derived.
NO_UPDATE = -1
