//! Protobuf messages and gRPC stubs generated from `proto/`, plus the encoded file descriptor
//! set that the server registers for reflection.

/// `order.v1`: the order service.
pub mod order {
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

/// `inventory.v1`: the inventory participant of the order saga.
pub mod inventory {
    pub mod v1 {
        tonic::include_proto!("inventory.v1");
    }
}

/// `payment.v1`: the payment participant of the order saga.
pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
    }
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
