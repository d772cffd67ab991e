//! The object of each custom resource when the `kubernetes` feature is off, as in the launcher, which reads a VM
//! but never meets the API server: the struct `kube`'s `CustomResource` derive makes, with the same fields and the
//! same serde layout (`apiVersion` and `kind` written, not checked when read), without the Kubernetes traits and the
//! schema, which would link kube-core and schemars into every program that reads a VM.

/// `plain_resource!(Kind, Spec)` or `plain_resource!(Kind, Spec, status = Status)`, after a doc comment.
macro_rules! plain_resource {
    ($(#[$attr:meta])* $kind:ident, $spec:ty $(, status = $status:ty)?) => {
        $(#[$attr])*
        #[derive(serde::Deserialize, Clone, Debug, Default, PartialEq)]
        #[serde(rename_all = "camelCase")]
        pub struct $kind {
            pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            pub spec: $spec,
            $(pub status: Option<$status>,)?
        }

        impl serde::Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut object = serializer.serialize_struct(stringify!($kind), 5)?;
                object.serialize_field("apiVersion", "vmlet.dev/v1alpha1")?;
                object.serialize_field("kind", stringify!($kind))?;
                object.serialize_field("metadata", &self.metadata)?;
                object.serialize_field("spec", &self.spec)?;
                $(
                    if let Some(status) = &self.status {
                        let status: &$status = status;
                        object.serialize_field("status", status)?;
                    }
                )?
                object.end()
            }
        }
    };
}
