"""What a load or a save touches on disk and on the Hub: atomic writes, where a save may write, safe checkpoint
loading, resolving base models, and pinning a Hub load to one commit. Depends on nothing else in the package but
`peft_shine.errors`."""
