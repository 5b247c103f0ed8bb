//! Nodes sharing one store: who is alive ([`Membership`], heartbeats
//! through the store), where a function's warm instances live
//! ([`rank`], rendezvous hashing over the live members), and which node
//! runs a trigger that must run once per cluster ([`Leases`]).
//!
//! Everything here goes through the [`Store`](flick_store::Store) trait:
//! with the embedded store it is a cluster of one (this node is every
//! function's home and holds every lease), with PostgreSQL the same code
//! coordinates every node, using the database's clock.
//!
//! # Layout
//! - `membership.rs`: the heartbeat loop and the live members.
//! - `rendezvous.rs`: home nodes by highest random weight.
//! - `leases.rs`: leases on names, renewed while wanted.

mod leases;
mod membership;
mod rendezvous;

pub use leases::{LeaseConfig, Leases};
pub use membership::{Load, Members, Membership, MembershipConfig};
pub use rendezvous::{rank, share};
