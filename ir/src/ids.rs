//! Typed ids for IR entities: newtypes over u32 indexing the arenas of `ModelGraph`.

use std::fmt;

macro_rules! id {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $name {
            pub fn new(index: usize) -> Self {
                // Arenas are built from files with far fewer than 2^32 entities.
                $name(u32::try_from(index).unwrap_or(u32::MAX))
            }

            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id!(ModuleId, "module");
id!(BoundaryId, "boundary");

/// A global rank: one GPU of the cluster, numbered node by node.
pub type Rank = u32;
