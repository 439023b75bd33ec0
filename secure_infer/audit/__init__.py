"""Privacy audit: membership, subject-membership and distribution inference, with reports."""
