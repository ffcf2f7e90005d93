//! The IC's certified hash trees (interface spec, "Certification"):
//! labeled nodes under forks, domain-separated SHA-256 digests, and the
//! CBOR form agents decode (`[0]`, `[1, l, r]`, `[2, label, t]`, `[3, v]`).

use ciborium::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A hash tree as the spec defines it (pruned subtrees are never sent:
/// every response carries exactly the paths it answers, signed afresh).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashTree {
    Empty,
    Fork(Box<HashTree>, Box<HashTree>),
    Labeled(Vec<u8>, Box<HashTree>),
    Leaf(Vec<u8>),
}

fn domain(sep: &str) -> Sha256 {
    let mut h = Sha256::new();
    h.update([sep.len() as u8]);
    h.update(sep.as_bytes());
    h
}

impl HashTree {
    /// The root hash the certificate's signature covers.
    pub fn digest(&self) -> [u8; 32] {
        match self {
            HashTree::Empty => domain("ic-hashtree-empty").finalize().into(),
            HashTree::Fork(l, r) => {
                let mut h = domain("ic-hashtree-fork");
                h.update(l.digest());
                h.update(r.digest());
                h.finalize().into()
            }
            HashTree::Labeled(label, t) => {
                let mut h = domain("ic-hashtree-labeled");
                h.update(label);
                h.update(t.digest());
                h.finalize().into()
            }
            HashTree::Leaf(v) => {
                let mut h = domain("ic-hashtree-leaf");
                h.update(v);
                h.finalize().into()
            }
        }
    }

    pub fn to_cbor(&self) -> Value {
        let int = |n: u8| Value::Integer(n.into());
        match self {
            HashTree::Empty => Value::Array(vec![int(0)]),
            HashTree::Fork(l, r) => Value::Array(vec![int(1), l.to_cbor(), r.to_cbor()]),
            HashTree::Labeled(label, t) => Value::Array(vec![int(2), Value::Bytes(label.clone()), t.to_cbor()]),
            HashTree::Leaf(v) => Value::Array(vec![int(3), Value::Bytes(v.clone())]),
        }
    }
}

/// Paths and their values, collected before they become a tree.
#[derive(Debug, Default, Clone)]
pub struct StateTree {
    children: BTreeMap<Vec<u8>, Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Vec<u8>),
    Subtree(StateTree),
}

impl StateTree {
    /// Sets the leaf at `path` (a later insert at the same path wins; a
    /// leaf never has children).
    pub fn insert(&mut self, path: &[&[u8]], value: Vec<u8>) {
        let (last, parents) = path.split_last().expect("a path has at least one label");
        let mut tree = self;
        for label in parents {
            let node = tree
                .children
                .entry(label.to_vec())
                .or_insert_with(|| Node::Subtree(StateTree::default()));
            if let Node::Leaf(_) = node {
                *node = Node::Subtree(StateTree::default());
            }
            let Node::Subtree(sub) = node else { unreachable!() };
            tree = sub;
        }
        tree.children.insert(last.to_vec(), Node::Leaf(value));
    }

    /// Makes `path` present as an (empty) subtree, so a lookup below it
    /// answers "absent" rather than "unknown".
    pub fn insert_subtree(&mut self, path: &[&[u8]]) {
        let mut tree = self;
        for label in path {
            let node = tree
                .children
                .entry(label.to_vec())
                .or_insert_with(|| Node::Subtree(StateTree::default()));
            let Node::Subtree(sub) = node else { return };
            tree = sub;
        }
    }

    /// The labeled children in label order, joined by balanced forks (the
    /// order agents' lookups rely on).
    pub fn to_hash_tree(&self) -> HashTree {
        let nodes: Vec<HashTree> = self
            .children
            .iter()
            .map(|(label, node)| {
                let sub = match node {
                    Node::Leaf(v) => HashTree::Leaf(v.clone()),
                    Node::Subtree(t) => t.to_hash_tree(),
                };
                HashTree::Labeled(label.clone(), Box::new(sub))
            })
            .collect();
        forks(nodes)
    }
}

fn forks(mut nodes: Vec<HashTree>) -> HashTree {
    match nodes.len() {
        0 => HashTree::Empty,
        1 => nodes.pop().expect("one node"),
        n => {
            let right = nodes.split_off(n / 2);
            HashTree::Fork(Box::new(forks(nodes)), Box::new(forks(right)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The worked example of the interface specification ("Example"
    /// under "Certification"): its root hash is printed there.
    #[test]
    fn the_specs_example_tree_has_the_specs_root_hash() {
        let leaf = |v: &[u8]| Box::new(HashTree::Leaf(v.to_vec()));
        let lab = |l: &[u8], t: Box<HashTree>| Box::new(HashTree::Labeled(l.to_vec(), t));
        let fork = |l, r| Box::new(HashTree::Fork(l, r));
        let tree = fork(
            fork(
                lab(
                    b"a",
                    fork(
                        fork(lab(b"x", leaf(b"hello")), Box::new(HashTree::Empty)),
                        lab(b"y", leaf(b"world")),
                    ),
                ),
                lab(b"b", leaf(b"good")),
            ),
            fork(lab(b"c", Box::new(HashTree::Empty)), lab(b"d", leaf(b"morning"))),
        );
        assert_eq!(
            hex(&tree.digest()),
            "eb5c5b2195e62d996b84c9bcc8259d19a83786a2f59e0878cec84c811f669aa0"
        );
    }

    #[test]
    fn a_state_tree_lists_labels_in_order_under_forks() {
        let mut t = StateTree::default();
        t.insert(&[b"time"], vec![1]);
        t.insert(&[b"request_status", b"r1", b"status"], b"replied".to_vec());
        t.insert(&[b"request_status", b"r1", b"reply"], vec![7]);
        let HashTree::Fork(left, right) = t.to_hash_tree() else {
            panic!("two top-level labels make a fork")
        };
        assert!(matches!(*left, HashTree::Labeled(ref l, _) if l == b"request_status"));
        assert!(matches!(*right, HashTree::Labeled(ref l, _) if l == b"time"));
    }
}
