//! The memcached text protocol: one implementation shared by the server, the load generator and
//! the tests, as [`crate::protocol`] is for percore's own protocol. [`client`] is the side a
//! client speaks: encoders for the commands it sends and a parser for the replies it reads.

pub mod client;
