//! DRBD's configuration language and command line: the `.res` parser, the typed config model,
//! the `drbdadm` front end and the status renderers.
