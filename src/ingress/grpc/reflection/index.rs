//! What reflection answers from: each registered file's bytes by name, and the file that defines each
//! fully-qualified symbol, indexed the way tonic-reflection does. Pure data, no I/O.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// Why a descriptor set could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The bytes are not a FileDescriptorSet.
    #[error("not a FileDescriptorSet: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A descriptor without a name cannot be looked up, nor can anything it contains.
    #[error("invalid FileDescriptorSet: a {0} has no name")]
    Unnamed(&'static str),
}

/// A FileDescriptorSet whose files stay undecoded, so the compiled-in ones are served byte for byte, custom
/// options included (prost drops fields it does not know when it re-encodes a `FileDescriptorProto`).
#[derive(Clone, PartialEq, Message)]
struct RawSet {
    /// Each file's encoded `FileDescriptorProto`.
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// One registered file.
#[derive(Debug)]
struct File {
    /// The encoded `FileDescriptorProto`, as every answer sends it.
    raw: Vec<u8>,
    /// The files it imports, sent along with it so a client can build it without asking again.
    imports: Vec<String>,
}

/// A file checked and named throughout, ready to be added: a set is indexed whole or not at all.
struct Entry {
    /// The file's name (`watchdog/v1/function.proto`).
    name: Arc<str>,
    /// The file itself.
    file: File,
    /// Every fully-qualified name it defines, services included.
    symbols: Vec<String>,
    /// Its services' fully-qualified names, in declaration order.
    services: Vec<String>,
}

/// Everything reflection can answer, built once from the registered descriptor sets.
#[derive(Debug, Default)]
pub struct Index {
    /// Registered files by name; the first file registered under a name wins.
    files: HashMap<Arc<str>, File>,
    /// Services, methods, messages (nested too), fields, oneofs, enums and enum values → their file's name.
    symbols: HashMap<String, Arc<str>>,
    /// Services in registration order, which is the order `list_services` reports.
    services: Vec<String>,
}

impl Index {
    /// Adds an encoded set, keeping each file's bytes as they are.
    pub fn add_encoded(&mut self, set: &[u8]) -> Result<(), IndexError> {
        let entries = RawSet::decode(set)?
            .file
            .into_iter()
            .map(|raw| {
                let descriptor = FileDescriptorProto::decode(raw.as_slice())?;
                Entry::of(&descriptor, raw)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.insert(entries);
        Ok(())
    }

    /// Adds a decoded set; its files are re-encoded, which loses only what decoding already lost.
    pub fn add_set(&mut self, set: &FileDescriptorSet) -> Result<(), IndexError> {
        let entries = set
            .file
            .iter()
            .map(|descriptor| Entry::of(descriptor, descriptor.encode_to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        self.insert(entries);
        Ok(())
    }

    /// Registers checked files. A file name or symbol seen before keeps its first file, so a user set cannot
    /// shadow the watchdog's own descriptors, and a service is listed once.
    fn insert(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if self.files.contains_key(&entry.name) {
                continue;
            }
            for symbol in entry.symbols {
                if self.symbols.contains_key(&symbol) {
                    continue;
                }
                if entry.services.contains(&symbol) {
                    self.services.push(symbol.clone());
                }
                self.symbols.insert(symbol, Arc::clone(&entry.name));
            }
            self.files.insert(entry.name, entry.file);
        }
    }

    /// Every registered service, in registration order.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The name of the file that defines `symbol`, if any does.
    pub fn file_defining(&self, symbol: &str) -> Option<&str> {
        self.symbols.get(symbol).map(|name| &**name)
    }

    /// The file named `name`, then those of its transitive imports that are not in `sent`, which records
    /// them all; `None` for an unknown file. An import missing from the index is left out: the client learns
    /// so when it asks for it by name.
    pub fn file_with_imports(&self, name: &str, sent: &mut HashSet<Arc<str>>) -> Option<Vec<Vec<u8>>> {
        let (name, file) = self.files.get_key_value(name)?;
        sent.insert(Arc::clone(name));
        let mut answer = vec![file.raw.clone()];
        let mut queue: VecDeque<&str> = file.imports.iter().map(String::as_str).collect();
        while let Some(import) = queue.pop_front() {
            let Some((name, file)) = self.files.get_key_value(import) else { continue };
            // A file sent before went out with its own imports, so they need no second look either; this also
            // ends the walk on import cycles, which a hand-made set may have.
            if sent.insert(Arc::clone(name)) {
                answer.push(file.raw.clone());
                queue.extend(file.imports.iter().map(String::as_str));
            }
        }
        Some(answer)
    }
}

impl Entry {
    /// Names everything `descriptor` defines; `raw` is its encoding.
    fn of(descriptor: &FileDescriptorProto, raw: Vec<u8>) -> Result<Entry, IndexError> {
        let name = descriptor.name.as_deref().ok_or(IndexError::Unnamed("file"))?;
        let package = descriptor.package.as_deref().unwrap_or_default();
        let mut symbols = Vec::new();
        for message in &descriptor.message_type {
            message_symbols(package, message, &mut symbols)?;
        }
        for enumeration in &descriptor.enum_type {
            enum_symbols(package, enumeration, &mut symbols)?;
        }
        let mut services = Vec::new();
        for service in &descriptor.service {
            let service_name = qualify(package, service.name.as_deref(), "service")?;
            for method in &service.method {
                symbols.push(qualify(&service_name, method.name.as_deref(), "method")?);
            }
            symbols.push(service_name.clone());
            services.push(service_name);
        }
        let file = File { raw, imports: descriptor.dependency.clone() };
        Ok(Entry { name: name.into(), file, symbols, services })
    }
}

/// Adds the names a message defines: itself, its nested messages and enums, fields and oneofs.
fn message_symbols(scope: &str, message: &DescriptorProto, symbols: &mut Vec<String>) -> Result<(), IndexError> {
    let name = qualify(scope, message.name.as_deref(), "message")?;
    for nested in &message.nested_type {
        message_symbols(&name, nested, symbols)?;
    }
    for enumeration in &message.enum_type {
        enum_symbols(&name, enumeration, symbols)?;
    }
    for field in &message.field {
        symbols.push(qualify(&name, field.name.as_deref(), "field")?);
    }
    for oneof in &message.oneof_decl {
        symbols.push(qualify(&name, oneof.name.as_deref(), "oneof")?);
    }
    symbols.push(name);
    Ok(())
}

/// Adds the names an enum defines: itself and its values, both inside the enum (as tonic-reflection names them)
/// and beside it (protobuf's own scoping, which grpc-go and protoc resolve).
fn enum_symbols(scope: &str, enumeration: &EnumDescriptorProto, symbols: &mut Vec<String>) -> Result<(), IndexError> {
    let name = qualify(scope, enumeration.name.as_deref(), "enum")?;
    for value in &enumeration.value {
        symbols.push(qualify(&name, value.name.as_deref(), "enum value")?);
        symbols.push(qualify(scope, value.name.as_deref(), "enum value")?);
    }
    symbols.push(name);
    Ok(())
}

/// `scope.name`, or `name` at the top of a file without a package.
fn qualify(scope: &str, name: Option<&str>, kind: &'static str) -> Result<String, IndexError> {
    let name = name.ok_or(IndexError::Unnamed(kind))?;
    Ok(if scope.is_empty() { name.to_string() } else { format!("{scope}.{name}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_in_files_are_served_byte_for_byte() {
        let set = crate::envelope::pb::FILE_DESCRIPTOR_SET;
        let mut index = Index::default();
        index.add_encoded(set).unwrap();
        let raw = RawSet::decode(set).unwrap().file;
        for file in &raw {
            let name = FileDescriptorProto::decode(file.as_slice()).unwrap().name().to_string();
            let served = index.file_with_imports(&name, &mut HashSet::new()).unwrap();
            assert_eq!(&served[0], file, "{name}");
        }
    }

    #[test]
    fn garbage_is_an_error_and_adds_nothing() {
        let mut index = Index::default();
        for garbage in [&b"\xff\xff\xff"[..], b"\x0a\x05ab", b"\x0a\x02\x08\x01"] {
            assert!(index.add_encoded(garbage).is_err(), "{garbage:?}");
        }
        assert!(index.files.is_empty() && index.symbols.is_empty() && index.services.is_empty());
        assert!(index.file_with_imports("", &mut HashSet::new()).is_none());
    }
}
